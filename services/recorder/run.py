"""The run a recorder records, owned by one object: its name and folder, config.json, summary.json, its row.

A run's name is its folder's name and its row's name in the runs table: both are claimed
together, so the two always agree. The recorder names the run after the time it starts
(``YYYYMMDD_HHMMSS``, then ``_1``, ``_2``... when taken, on disk or in the database); a run
folder given with --run-dir is used under its own name or not at all.

config.json says how the run was made (the recorder's and the pipeline's settings, the
model once known, where each stream's files are); summary.json what it recorded. Both are
rewritten whole, through a temporary file. summary.json has one shape whether the run had
one camera or several (summary.summarise)::

    {"run": {...}, "streams": {"cam0": {...}, ...}, "totals": {...}}

and a stream with a folder of its own (``<run>/<stream>/``) gets a summary.json of the
same shape there, listing that stream alone. It is written as the run goes too (``ended_at``
still null), so that a recorder that dies leaves its last counts behind.

A run is claimed anew, or reopened (``reopen``) by a recorder that resumes it after its
recorder died, the core naming it in its Welcome (docs/PROTOCOL.md). Either way its
recorder holds the folder's lock (runlock.py) until the run's row is ended.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from encoders.shared.disks import disk_problem
from encoders.shared.masking import mask_secrets
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable
from encoders.shared.storage.runs import RunRow

from .runfiles import CONFIG_JSON, DRIFT_CSV, EMBEDDINGS_DIR, SUMMARY_JSON, read_json, write_json
from .runlock import RunLock
from .summary import settle_embedded, summarise

LIVES_JSON = ".lives.json"  # the counts of what was acknowledged, while the run is open

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


def folder_of(row: RunRow, runs_dir: str | os.PathLike) -> Path | None:
    """The run's folder on this machine: where its recorder said it wrote it, or under ``runs_dir``;
    only one whose config.json names this run (a folder of the same name from another database is
    not it). None when neither is here."""
    candidates = [Path(row.dir)] if row.dir else []
    candidates.append(Path(runs_dir) / row.name)
    for folder in candidates:
        config = read_json(folder / CONFIG_JSON)
        if config is not None and (config.get("run") or {}).get("id") == row.id:
            return folder
    return None


class RecordedRun:
    def __init__(
        self,
        db: RunsTable,
        folder: Path,
        run_id: int,
        started: datetime,
        config: dict[str, Any],
        lock: RunLock | None = None,
    ):
        self.db = db
        self.dir = folder
        self.id = run_id
        self.name = folder.name
        self.started = started
        self.config = config
        self.lock = lock
        self.previous_summary: dict[str, Any] | None = None  # a resumed run's last summary.json
        self.durable_lives: dict[str, Any] | None = None  # a resumed run's counts of what was acknowledged
        self.summary_failed = False  # the last summary.json could not be written
        self._stream_folders: dict[str, Path] = {
            name: folder / rel if rel not in ("", ".") else folder for name, rel in config.get("streams", {}).items()
        }

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
        folder, run_id, lock = (
            _claim_given(db, Path(run_dir), started) if run_dir else _claim_next(db, runs_dir, started)
        )
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
        run = cls(db, folder, run_id, started, config, lock)
        try:
            db.update_run(run_id, config=config)
            run._write_config()
        except BaseException:
            lock.release()
            raise
        return run

    @classmethod
    def reopen(
        cls, db: RunsTable, row: RunRow, folder: Path, lock: RunLock, now: datetime | None = None
    ) -> RecordedRun:
        """A run left open by a recorder that died, taken on by this one (its lock already held).

        Its files are rewritten from its rows by the Recorder (Recorder.resume); here its
        config.json notes the resumption, and its last summary.json is kept for its counts.
        """
        config = read_json(folder / CONFIG_JSON) or dict(row.config)
        config.setdefault("run", {}).setdefault("resumed_at", []).append((now or datetime.now(UTC)).isoformat())
        config.setdefault("streams", {})
        started = row.started_at or now or datetime.now(UTC)
        run = cls(db, folder, row.id, started, config, lock)
        run.previous_summary = read_json(folder / SUMMARY_JSON) or row.summary
        run.durable_lives = read_json(folder / LIVES_JSON)
        run._write_config()
        return run

    # -- while it runs -------------------------------------------------------------------------

    def set_model(self, model: str, dim: int) -> None:
        """The model that embedded this run's frames (its row gets it with the first rows written)."""
        self.config["model"] = {"name": model, "dim": dim}
        self._write_config()

    @property
    def stream_folders(self) -> dict[str, Path]:
        """Each stream's folder, in the order the streams came (config.json's ``streams``)."""
        return dict(self._stream_folders)

    def add_stream(self, stream: str, folder: Path) -> None:
        """A stream's files are in ``folder`` (the run folder itself, or a folder of its own in it)."""
        self._stream_folders[stream] = folder
        self.config["streams"][stream] = self._relative(folder)
        self._write_config()

    # -- at the end ----------------------------------------------------------------------------

    def write_summary(
        self, run_info: Mapping[str, Any], streams: Mapping[str, dict[str, Any]], ended: datetime | None = None
    ) -> dict[str, Any]:
        """Write every summary.json (``ended`` None: the run goes on); returns the run folder's summary.

        ``run_info``: what the recorder tells of the run (rows written, outages, message
        counts); ``streams``: each stream's summary (StreamSummary.to_dict).
        """
        run = {
            "id": self.id,
            "name": self.name,
            "dir": str(self.dir.resolve()),
            "started_at": self.started.isoformat(),
            "ended_at": ended.isoformat() if ended is not None else None,
            **run_info,
        }
        per_stream = {name: {**s, "folder": self.config["streams"].get(name, ".")} for name, s in streams.items()}
        summary = summarise(run, per_stream)
        self.summary_failed = True
        try:
            write_json(self.dir / SUMMARY_JSON, summary)
            for name, folder in self._stream_folders.items():
                if folder != self.dir and name in per_stream:
                    write_json(folder / SUMMARY_JSON, summarise(run, {name: per_stream[name]}))
            self.summary_failed = False
        except OSError as exc:  # the run's row still gets the summary; `encoders runs repair` writes the files
            log.error("%s", disk_problem(exc, self.dir / SUMMARY_JSON))
        return summary

    def write_lives(self, lives: Mapping[str, Any]) -> None:
        """Each stream's counts of what the recorder has acknowledged (acks.py), for a recorder
        that resumes this run after a crash: written before the acknowledgements are sent.
        Through a temporary file, not synced: it survives the process, not the machine."""
        write_json(self.dir / LIVES_JSON, lives)

    def finish(
        self, run_info: Mapping[str, Any], streams: Mapping[str, dict[str, Any]], ended: datetime | None = None
    ) -> dict[str, Any]:
        """Write every summary.json, end the run's row and let go of its folder; returns the run folder's summary."""
        ended = ended or datetime.now(UTC)
        if run_info.get("db_rows_spooled") == 0:  # every row is in the database: embedded is what it holds
            streams = {name: dict(s, frames=dict(s["frames"])) for name, s in streams.items()}
            for stream in streams.values():
                settle_embedded(stream)
        summary = self.write_summary(run_info, streams, ended)
        try:
            self.db.update_run(self.id, ended_at=ended, summary=summary)
        except (DatabaseUnavailable, DatabaseRefused) as exc:
            # summary.json has it; the next recorder (or `encoders runs repair`) ends the row from the rows.
            log.warning("could not mark the run ended in the database: %s", exc)
        if not self.summary_failed:
            (self.dir / LIVES_JSON).unlink(missing_ok=True)  # summary.json has the final counts
        self.release()
        return summary

    def release(self) -> None:
        """Let go of the run's folder (its lock), once its row is ended or left for a later recorder."""
        if self.lock is not None:
            self.lock.release()

    # -- internals -----------------------------------------------------------------------------

    def _relative(self, folder: Path) -> str:
        return folder.relative_to(self.dir).as_posix() if folder != self.dir else "."

    def _write_config(self) -> None:
        write_json(self.dir / CONFIG_JSON, self.config)
        for name, folder in self._stream_folders.items():
            if folder != self.dir:
                write_json(folder / CONFIG_JSON, {**self.config, "streams": {name: "."}, "stream": name})


def _claim_given(db: RunsTable, folder: Path, started: datetime) -> tuple[Path, int, RunLock]:
    if (folder / DRIFT_CSV).exists() or (folder / EMBEDDINGS_DIR).exists():
        raise RunNameTaken(f"{folder} already holds a run; give another --run-dir")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock.take(folder)
    if lock is None:
        raise RunNameTaken(f"{folder} is in use by another recorder; give another --run-dir")
    try:
        run_id = db.claim_run(folder.name, started)
        if run_id is None:
            raise RunNameTaken(
                f"the database already has a run named {folder.name!r}; give another --run-dir, or none (the "
                "recorder then names the run after the time it starts)"
            )
    except BaseException:
        lock.release()
        if made:
            folder.rmdir()
        raise
    return folder, run_id, lock


def _claim_next(db: RunsTable, runs_dir: str | os.PathLike, started: datetime) -> tuple[Path, int, RunLock]:
    """The first time-stamped name free both on disk and in the database."""
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    for folder in run_dir_candidates(runs_dir, started.astimezone()):
        try:
            folder.mkdir()  # atomic: two recorders starting in the same second get different folders
        except FileExistsError:
            continue
        lock = RunLock.take(folder)  # before the row: an open row with no lock is a run left behind
        assert lock is not None  # the folder is new: nobody else has opened it
        try:
            run_id = db.claim_run(folder.name, started)
        except BaseException:
            lock.release()
            folder.rmdir()
            raise
        if run_id is not None:
            return folder, run_id, lock
        lock.release()
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
