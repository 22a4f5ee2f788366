"""The run a recorder records, owned by one object: its name and folder, config.json, summary.json, its row.

A run's name is its folder's name and its row's name in the runs table: both are claimed
together, so the two always agree. The recorder names the run after the time it starts
(``YYYYMMDD_HHMMSS``, then ``_1``, ``_2``... when taken, on disk or in the database); a run
folder given with --run-dir is used under its own name or not at all.

config.json says how the run was made (the recorder's and the pipeline's settings, the
model once known, where each stream's files are); summary.json what it recorded. Both are
rewritten whole, through a temporary file. summary.json has one shape whether the run had
one camera or several::

    {"run": {...}, "streams": {"cam0": {...}, ...}, "totals": {...}}

and a stream with a folder of its own (``<run>/<stream>/``) gets a summary.json of the
same shape there, listing that stream alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from encoders.shared.settings import mask_url
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable

from .runfiles import CONFIG_JSON, DRIFT_CSV, EMBEDDINGS_DIR, SUMMARY_JSON, write_json
from .summary import COUNT_KEYS

log = logging.getLogger(__name__)


class RunsTable(Protocol):
    """What a run needs of the database: its row (storage.connection.Database is one)."""

    def claim_run(self, name: str, started_at: datetime) -> int | None: ...

    def update_run(self, run_id: int, **fields: Any) -> None: ...


class RunNameTaken(RuntimeError):
    """The run folder asked for (--run-dir) holds a run already, or the database has a run of its name."""


def run_dir_candidates(runs_dir: str | os.PathLike, now: datetime | None = None) -> Iterator[Path]:
    """runs/20260107_143022, then runs/20260107_143022_1, _2, ... (the caller skips taken ones)."""
    base = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    yield Path(runs_dir) / base
    n = 1
    while True:
        yield Path(runs_dir) / f"{base}_{n}"
        n += 1


class RecordedRun:
    def __init__(self, db: RunsTable, folder: Path, run_id: int, started: datetime, config: dict[str, Any]):
        self.db = db
        self.dir = folder
        self.id = run_id
        self.name = folder.name
        self.started = started
        self.config = config
        self._stream_folders: dict[str, Path] = {}

    # -- claiming ------------------------------------------------------------------------------

    @classmethod
    def claim(
        cls,
        db: RunsTable,
        *,
        runs_dir: str | os.PathLike,
        run_dir: str | os.PathLike = "",
        settings: Mapping[str, Any] | None = None,
        pipeline: Any = None,
        database: str = "",
        now: datetime | None = None,
    ) -> RecordedRun:
        """Claim a run's folder and row together, and write its config.json.

        RunNameTaken when ``run_dir`` is given and taken; DatabaseUnavailable or
        DatabaseRefused when the database cannot take the row.
        """
        started = now or datetime.now(UTC)
        folder, run_id = _claim_given(db, Path(run_dir), started) if run_dir else _claim_next(db, runs_dir, started)
        config = {
            "run": {
                "id": run_id,
                "name": folder.name,
                "dir": str(folder.resolve()),
                "started_at": started.isoformat(),
                "database": database,
            },
            "model": None,  # learned from the first record
            "recorder": dict(settings or {}),
            "pipeline": pipeline if pipeline is not None else {},
            "streams": {},
        }
        run = cls(db, folder, run_id, started, config)
        db.update_run(run_id, config=config)
        run._write_config()
        return run

    # -- while it runs -------------------------------------------------------------------------

    def set_model(self, model: str, dim: int) -> None:
        """The model that embedded this run's frames (its row gets it with the first rows written)."""
        self.config["model"] = {"name": model, "dim": dim}
        self._write_config()

    def add_stream(self, stream: str, folder: Path) -> None:
        """A stream's files are in ``folder`` (the run folder itself, or a folder of its own in it)."""
        self._stream_folders[stream] = folder
        self.config["streams"][stream] = self._relative(folder)
        self._write_config()

    # -- at the end ----------------------------------------------------------------------------

    def finish(self, run_info: Mapping[str, Any], streams: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        """Write every summary.json and end the run's row; returns the run folder's summary.

        ``run_info``: what the recorder tells of the run (rows written, outages, message
        counts); ``streams``: each stream's summary (StreamSummary.to_dict).
        """
        ended = datetime.now(UTC)
        run = {
            "id": self.id,
            "name": self.name,
            "dir": str(self.dir.resolve()),
            "started_at": self.started.isoformat(),
            "ended_at": ended.isoformat(),
            **run_info,
        }
        per_stream = {name: {**s, "folder": self.config["streams"].get(name, ".")} for name, s in streams.items()}
        summary = summarise(run, per_stream)
        write_json(self.dir / SUMMARY_JSON, summary)
        for name, folder in self._stream_folders.items():
            if folder != self.dir:
                write_json(folder / SUMMARY_JSON, summarise(run, {name: per_stream[name]}))
        try:
            self.db.update_run(self.id, ended_at=ended, summary=summary)
        except (DatabaseUnavailable, DatabaseRefused) as exc:
            # summary.json has it; a later recorder that replays this run's spool ends the row from it.
            log.warning("could not mark the run ended in the database: %s", exc)
        return summary

    # -- internals -----------------------------------------------------------------------------

    def _relative(self, folder: Path) -> str:
        return folder.relative_to(self.dir).as_posix() if folder != self.dir else "."

    def _write_config(self) -> None:
        write_json(self.dir / CONFIG_JSON, self.config)
        for name, folder in self._stream_folders.items():
            if folder != self.dir:
                write_json(folder / CONFIG_JSON, {**self.config, "streams": {name: "."}, "stream": name})


def summarise(run: Mapping[str, Any], streams: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """summary.json's one shape: the run, each stream, and their totals."""
    summaries = list(streams.values())
    frames: dict[str, int | None] = {}
    for key in COUNT_KEYS:
        values = [s["frames"][key] for s in summaries if s["frames"].get(key) is not None]
        # Unknown stays None (no stream ended: nobody said how many were published); with no
        # stream at all, nothing was embedded.
        frames[key] = sum(values) if values else (0 if key == "embedded" and not summaries else None)
    totals = {
        "frames": frames,
        "records": sum(s["records"] for s in summaries),
        "snapshots": sum(s["snapshots"] for s in summaries),
        "npz_batches": sum(s["npz_batches"] for s in summaries),
        "db_rows": sum(s["db_rows"] for s in summaries),
    }
    return {"run": dict(run), "streams": dict(streams), "totals": totals}


def _claim_given(db: RunsTable, folder: Path, started: datetime) -> tuple[Path, int]:
    if (folder / DRIFT_CSV).exists() or (folder / EMBEDDINGS_DIR).exists():
        raise RunNameTaken(f"{folder} already holds a run; give another --run-dir")
    run_id = db.claim_run(folder.name, started)
    if run_id is None:
        raise RunNameTaken(
            f"the database already has a run named {folder.name!r}; give another --run-dir, or none (the recorder "
            "then names the run after the time it starts)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder, run_id


def _claim_next(db: RunsTable, runs_dir: str | os.PathLike, started: datetime) -> tuple[Path, int]:
    """The first time-stamped name free both on disk and in the database."""
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    for folder in run_dir_candidates(runs_dir, started.astimezone()):
        try:
            folder.mkdir()  # atomic: two recorders starting in the same second get different folders
        except FileExistsError:
            continue
        try:
            run_id = db.claim_run(folder.name, started)
        except BaseException:
            folder.rmdir()
            raise
        if run_id is not None:
            return folder, run_id
        folder.rmdir()  # the database has a run of this name, recorded under another runs folder
    raise AssertionError("unreachable: run_dir_candidates never ends")


def pipeline_settings(text: str) -> Any:
    """The pipeline's settings (a JSON string from the launcher), with secrets masked, for config.json."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("--pipeline-config is not JSON; stored as text")
        value = text
    return mask_secrets(value)


def mask_secrets(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        if value and any(word in key.lower() for word in ("password", "secret", "token")):
            return "***"
        return mask_url(value)
    return value
