"""`encoders search`, `encoders events` and `encoders runs`: questions asked of the recorded frames.

Each reads the recorder's database (the one given, or the embedded one under the runs
folder that the all-in-one command wrote to), prints its answer on stdout as a table,
JSON or CSV, and notes on stderr. Exit code 0 with an answer (even an empty one), 2 when
the question cannot be answered (the message says why).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from encoders.shared.storage import embedded
from encoders.shared.storage.config import DatabaseConfig
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable, one_line
from encoders.shared.storage.filters import FilterError, Filters, parse_frame_ref, parse_time
from encoders.shared.storage.hits import Hit
from encoders.shared.storage.store import Store, StoreError, reading

from .config import SearchConfig
from .output import render
from .query import QueryError

SEARCH_COLUMNS = {
    "table": ("rank", "run", "stream", "seq", "time", "similarity", "drift", "picture"),
    "full": Hit.JSON_FIELDS,
}
EVENT_COLUMNS = {
    "table": ("run", "stream", "seq", "time", "kind", "value", "snapshot"),
    "full": (
        "run_id",
        "run",
        "stream",
        "seq",
        "time",
        "kind",
        "value",
        "drift",
        "window_mean",
        "window_std",
        "snapshot",
    ),
}
RUN_COLUMNS = {
    "table": ("id", "name", "started", "ended", "model", "streams", "frames", "scene_changes", "drift_mean"),
    "full": (
        "id",
        "name",
        "started",
        "ended",
        "duration_s",
        "model",
        "dim",
        "streams",
        "frames",
        "scene_changes",
        "drift_mean",
        "dir",
        "summary",
    ),
}


class Failed(Exception):
    """A question that cannot be answered; the message is for the person who asked."""


@contextmanager
def open_store(cfg: DatabaseConfig) -> Iterator[Store]:
    try:
        with (
            embedded.database(cfg.database_url, cfg.runs_dir, create=False) as url,
            reading(url, cfg.runs_dir) as store,
        ):
            yield store
    except (embedded.NoDatabase, DatabaseUnavailable) as exc:
        raise Failed(f"cannot reach the database: {exc}") from None


def _filters(since: str | None, until: str | None, stream: str | None) -> Filters:
    return Filters(
        stream=stream or None, since=parse_time(since) if since else None, until=parse_time(until) if until else None
    )


def _answer(fn) -> int:
    """Run ``fn``; a question that cannot be answered is said on stderr, exit code 2."""
    try:
        fn()
    except (Failed, FilterError, StoreError, QueryError, DatabaseRefused) as exc:
        print(f"encoders: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"encoders: database: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def search(
    cfg: SearchConfig,
    *,
    text: str | None = None,
    image: str | None = None,
    frame: str | None = None,
    run: str | None = None,
    stream: str | None = None,
    since: str | None = None,
    until: str | None = None,
    k: int = 10,
    fmt: str = "table",
    thumbnails: str = "",
) -> int:
    """The ``k`` frames most like a sentence, a picture or a recorded frame, best first."""
    if sum(x is not None for x in (text, image, frame)) != 1:
        print("encoders search: give exactly one of --text, --image, --frame", file=sys.stderr)
        return 2

    def ask() -> None:
        from .query import QueryEmbedder

        with open_store(cfg) as store:
            filters = _scoped(store, run, since, until, stream)
            if frame is not None:
                vector, qrun, qstream = store.frame_vector(parse_frame_ref(frame))
                if qrun.model is None:
                    raise StoreError(f"run {qrun.name} has no model recorded: its frames cannot be compared")
                label, what = qrun.model, f"frame {qrun.name}:{qstream}:{parse_frame_ref(frame).seq}"
            else:
                embedder = QueryEmbedder(cfg.model, cfg.pretrained, cfg.device)
                if text is not None:
                    vector, what = embedder.text(text), repr(text)
                else:
                    assert image is not None  # exactly one of the three, checked above
                    vector, what = embedder.image(image), image
                label = embedder.label
            filters, notes = store.restrict_to_model(label, filters)
            result = store.nearest(
                vector,
                k,
                filters,
                candidates=cfg.search_candidates,
                ef_search=cfg.search_ef_text if text is not None else cfg.search_ef,
                exact_limit=cfg.search_exact_keyframes,
            )
            if thumbnails:
                store.export_thumbnails(result.hits, thumbnails)
        for note in notes + result.notes:
            print(f"note: {note}", file=sys.stderr)
        if fmt == "table":
            print(f"{len(result.hits)} frames nearest to {what} ({label}; {result.plan.describe()})", file=sys.stderr)
        columns = SEARCH_COLUMNS["table" if fmt == "table" else "full"]
        sys.stdout.write(render([h.as_dict() for h in result.hits], columns, fmt))

    return _answer(ask)


def _scoped(store, run: str | None, since: str | None, until: str | None, stream: str | None):
    """The command's filters, with --run resolved against this database (after checking its schema)."""
    store.check_schema()
    filters = _filters(since, until, stream)
    return filters.with_runs((store.resolve_run(run).id,)) if run is not None else filters


def events(
    cfg: DatabaseConfig,
    *,
    run: str | None = None,
    stream: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
    fmt: str = "table",
) -> int:
    """Scene changes and alerts, oldest first."""

    def ask() -> None:
        with open_store(cfg) as store:
            rows = store.events(_scoped(store, run, since, until, stream), limit)
        sys.stdout.write(render(rows, EVENT_COLUMNS["table" if fmt == "table" else "full"], fmt))

    return _answer(ask)


def runs(cfg: DatabaseConfig, *, run: str | None = None, limit: int = 1000, fmt: str = "table") -> int:
    """Every run (or one), oldest first, with its counts and summary."""

    def ask() -> None:
        with open_store(cfg) as store:
            store.check_schema()
            ids = (store.resolve_run(run).id,) if run is not None else None
            rows = store.runs(limit, ids)
        sys.stdout.write(render(rows, RUN_COLUMNS["table" if fmt == "table" else "full"], fmt))

    return _answer(ask)
