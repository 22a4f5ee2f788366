"""Text search for the web viewer: a sentence -> CLIP's text tower -> the nearest stored frames.

The same search as `encoders search --text`: services/search embeds the query with the
encoder's own model (QueryEmbedder) and ranks frames through the keyframe index (Store),
restricted to runs embedded with that model, since embeddings of two models are not
comparable. This module only adapts its answers to the page.

torch and open_clip are imported at the first search only, so a viewer without a database
needs neither.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoders.shared.storage.config import SEARCH_EF_TEXT

if TYPE_CHECKING:  # psycopg and torch are imported by the first search
    from encoders.services.search.query import QueryEmbedder
    from encoders.shared.storage.hits import Hit

log = logging.getLogger(__name__)

MAX_RESULTS = 50


MAX_OFFSET = 450  # paging reaches rank 500 at most: past it, narrow the query (a run, a stream, a time)


class SearchError(RuntimeError):
    """The search could not run (database unreachable, model not loadable); the message says why."""


class QueryProblem(ValueError):
    """The query itself is wrong (no such run, a time that does not parse, a picture that is none)."""


@dataclass(frozen=True)
class Query:
    """One of a sentence, a picture (its bytes) or a stored frame (RUN[:STREAM]:SEQ), and a scope."""

    text: str = ""
    image: bytes | None = None
    frame: str = ""
    run: str = ""
    stream: str = ""
    since: str = ""
    until: str = ""


class TextSearch:
    """Thread-safe; the model is loaded by the first search (or ``warm_up``) and kept."""

    def __init__(
        self, database_url: str, model: str, pretrained: str, runs_dir: str, *, ef_search: int = SEARCH_EF_TEXT
    ) -> None:
        self.database_url = database_url
        self.ef_search = ef_search  # hnsw.ef_search: a sentence lies far from every frame
        self.runs_dir = Path(runs_dir)
        self.model, self.pretrained = model, pretrained
        self._lock = threading.Lock()
        self._embedder: QueryEmbedder | None = None

    def warm_up(self) -> str:
        return self._query_embedder().label

    def embed(self, text: str) -> tuple[np.ndarray, str]:
        """The L2-normalised text embedding, and the model label the recorder stores in runs.model."""
        from encoders.services.search.query import QueryError

        embedder = self._query_embedder()
        try:
            with self._lock:
                return embedder.text(text), embedder.label
        except QueryError as exc:
            raise SearchError(str(exc)) from None

    def search(self, text: str, k: int = 12) -> tuple[list[Hit], str]:
        """The ``k`` frames nearest to ``text``, best first, and a note for the person (why none)."""
        if not text.strip():
            return [], "type what to look for"
        return self.find(Query(text=text), k=k)

    def find(
        self, query: Query, *, k: int = 12, offset: int = 0, min_similarity: float | None = None
    ) -> tuple[list[Hit], str]:
        """What `encoders search` finds, for the HTTP API: the frames nearest to a sentence, a
        picture or a stored frame, within ``query``'s scope; ranks ``offset + 1`` to ``offset + k``,
        those at least ``min_similarity`` alike. SearchError when it cannot run, QueryError (its
        message for the person) when the query is wrong."""
        from encoders.shared.storage.filters import Filters, parse_frame_ref, parse_time
        from encoders.shared.storage.store import StoreError, reading

        with self._answering():
            filters = Filters(
                stream=query.stream or None,
                since=parse_time(query.since) if query.since else None,
                until=parse_time(query.until) if query.until else None,
            )
            ref = parse_frame_ref(query.frame) if query.frame else None  # a query that does not parse: no database
            with reading(self.database_url, self.runs_dir) as store:
                if not store.has_frames():
                    return [], "the database holds no frames yet"
                if query.run:
                    filters = filters.with_runs((store.resolve_run(query.run).id,))
                if ref is not None:
                    vector, run, _stream = store.frame_vector(ref)
                    if run.model is None:
                        raise StoreError(f"run {run.name} has no model recorded: its frames cannot be compared")
                    label = run.model
                elif query.image is not None:
                    vector, label = self.embed_image(query.image)
                else:
                    vector, label = self.embed(query.text)
                filters, notes = store.restrict_to_model(label, filters)
                wanted = max(1, min(k, MAX_RESULTS)) + max(0, offset)
                result = store.nearest(vector, min(wanted, MAX_RESULTS + MAX_OFFSET), filters, ef_search=self.ef_search)
                hits = [h for h in result.hits if min_similarity is None or h.similarity >= min_similarity]
                hits = hits[offset : offset + k]
                store.load_thumbnails(hits)  # each hit's own picture, not the nearest snapshot
        for hit in hits:
            if not (hit.snapshot and Path(hit.snapshot).is_file()):
                hit.snapshot = hit.snapshot_seq = None
        note = "; ".join(notes + result.notes)
        return hits, note if hits else (note or "no match")

    def timeline(self, scope: Query, points: int = 600) -> dict:
        """Drift over the scope's period, with its scene changes and alerts (the page's timeline)."""
        from encoders.shared.storage.filters import Filters, parse_time
        from encoders.shared.storage.store import reading

        with self._answering():
            filters = Filters(
                stream=scope.stream or None,
                since=parse_time(scope.since) if scope.since else None,
                until=parse_time(scope.until) if scope.until else None,
            )
            with reading(self.database_url, self.runs_dir) as store:
                if not store.has_frames():
                    return {"since": None, "until": None, "step_s": None, "streams": {}, "events": []}
                if scope.run:
                    filters = filters.with_runs((store.resolve_run(scope.run).id,))
                return store.timeline(filters, points)

    def frame_thumbnail(self, run: str, stream: str, seq: int) -> bytes | None:
        """A stored frame's picture (its thumbnail, or its keyframe's); None if none."""
        from encoders.shared.storage.store import reading

        with self._answering(), reading(self.database_url, self.runs_dir) as store:
            return store.frame_thumbnail(run, stream, seq) if store.has_frames() else None

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """Errors in the page's terms: the query's own (no such run, a time that does not
        parse, a picture that is none) QueryProblem, the database's SearchError."""
        import psycopg

        from encoders.services.search.query import QueryError
        from encoders.shared.storage.errors import DatabaseUnavailable, one_line
        from encoders.shared.storage.filters import FilterError
        from encoders.shared.storage.store import StoreError

        try:
            yield
        except (StoreError, FilterError, QueryError) as exc:
            raise QueryProblem(str(exc)) from None
        except DatabaseUnavailable as exc:
            raise SearchError(f"database: {exc}") from None
        except psycopg.Error as exc:
            raise SearchError(f"database: {one_line(exc, self.database_url)}") from None

    def embed_image(self, data: bytes) -> tuple[np.ndarray, str]:
        """An uploaded picture's embedding, and the model label."""
        import tempfile

        embedder = self._query_embedder()
        with tempfile.NamedTemporaryFile(suffix=".jpg") as f:  # the command's own path: decoding as the encoder does
            f.write(data)
            f.flush()
            with self._lock:
                return embedder.image(f.name), embedder.label

    def _query_embedder(self):
        with self._lock:
            if self._embedder is None:
                try:
                    from encoders.services.search.query import QueryEmbedder
                except ImportError as exc:
                    raise SearchError(
                        f"search needs torch and open_clip (pip install 'encoders[viewer-search]'): {exc}"
                    ) from None
                log.info("loading the text tower of %s (%s) for search", self.model, self.pretrained)
                self._embedder = QueryEmbedder(self.model, self.pretrained, "cpu")
            return self._embedder
