"""Runs left open by a recorder that is gone, closed from the database (docs/PROTOCOL.md).

A recorder killed mid-run leaves its run's row open (``ended_at`` NULL) and its files as
they were: drift.csv and the npz batches may hold more or fewer frames than the rows (the
files are flushed now and then, the rows committed in batches), and no final summary.

Closing one makes everything agree with its rows: the spool it left is written first, then
each stream's drift.csv and npz batches are rewritten from its rows (StreamFiles.restore),
summary.json is written from them (embedded = the rows; the other counts from the last
summary.json the recorder wrote, if any), and the row is ended (``ended_at`` = when the
last summary says it ended, else the last frame's capture time, else now).

Who closes: the next recorder (every open run but the one it records or resumes), and
``encoders runs repair``. A run whose folder's lock is held is being recorded and is left
alone; one whose folder is not on this machine is left too, unless named (``--run``): it
is then closed from the database alone.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from encoders.shared.spool import SpoolLocked
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable
from encoders.shared.storage.frames import StoredRow
from encoders.shared.storage.runs import RunRow, StoredStream

from .replay import replay_spool
from .run import LIVES_JSON, RecordedRun, folder_of
from .runfiles import CONFIG_JSON, SUMMARY_JSON, read_json
from .runlock import RunLock
from .stream_files import StreamFiles
from .summary import StreamSummary, settle_embedded, summarise
from .writer import SPOOL_NAME

log = logging.getLogger(__name__)

# A run's own figures that a closing keeps from its last summary.json (the rest is worked out again).
RUN_KEYS_KEPT = ("messages", "db_outages", "db_quarantined")


def close_open_runs(
    db: Database, runs_dir: str | Path, *, keep: frozenset[str] = frozenset(), only: str | None = None
) -> list[tuple[str, str]]:
    """Close the open runs no live recorder holds (``only``: that run alone, by name or id, even if its
    folder is elsewhere). Returns (run name, what was done) for each open run looked at."""
    report = []
    for row in db.open_runs():
        if row.name in keep or (only is not None and only not in (row.name, str(row.id))):
            continue
        folder = folder_of(row, runs_dir)
        if folder is None and only is None:
            report.append(
                (
                    row.name,
                    f"left open: its folder ({row.dir or 'unknown'}) is not on this machine; "
                    f"`encoders runs repair --run {row.name}` closes it from the database alone",
                )
            )
            continue
        lock = RunLock.take(folder) if folder is not None else None
        if folder is not None and lock is None:
            report.append((row.name, "left open: a live recorder is recording it"))
            continue
        try:
            report.append((row.name, _close_held(db, row.name, folder)))
        except (DatabaseUnavailable, DatabaseRefused, SpoolLocked, OSError) as exc:
            report.append((row.name, f"could not close it: {exc}"))
            log.warning("could not close run %s: %s", row.name, exc)
        finally:
            if lock is not None:
                lock.release()
    return report


def _close_held(db: Database, name: str, folder: Path | None) -> str:
    fresh = db.run_row(name)  # again, now that its lock is ours: its recorder may have ended it meanwhile
    if fresh is None or fresh.ended_at is not None:
        return "ended by its recorder meanwhile"
    if folder is not None and (folder / SPOOL_NAME).exists():
        replay_spool(db, folder / SPOOL_NAME)
    summary = close_run(db, fresh, folder)
    rows, ended = summary["run"]["db_rows"], summary["run"]["ended_at"]
    where = f"files rewritten in {folder}" if folder is not None else "from the database alone"
    log.info("closed run %s, left open by a recorder that is gone: %d rows, ended at %s; %s", name, rows, ended, where)
    return f"closed: {rows} rows, ended at {ended}; {where}"


def close_run(db: Database, row: RunRow, folder: Path | None) -> dict[str, Any]:
    """End a run from its rows (its folder's files rewritten to agree, if ``folder``); returns its summary."""
    previous = (read_json(folder / SUMMARY_JSON) if folder is not None else None) or row.summary or {}
    config = (read_json(folder / CONFIG_JSON) if folder is not None else None) or dict(row.config)
    settings = config.get("recorder") or {}
    stored = db.stored_streams(row.id)
    listed: dict[str, str] = dict(config.get("streams") or {})
    for name in stored:
        if name not in listed:
            listed[name] = "." if not listed and not settings.get("stream_dirs") else name
    config["streams"] = listed
    last_prev = previous.get("streams") or {}
    durable = (read_json(folder / LIVES_JSON) if folder is not None else None) or {}  # newer than summary.json
    streams: dict[str, dict[str, Any]] = {}
    for name, rel in listed.items():
        restored, rows, batches = _restore_stream(db, row, name, folder, rel, settings, stored.get(name))
        restored.model, restored.dim = row.model, row.dim
        prev = last_prev.get(name) or {}
        lives = durable.get(name) or prev.get("lives") or {"": prev.get("frames") or {}}
        restored.restore_counts(lives, bool(prev.get("ended")))
        streams[name] = restored.to_dict(npz_batches=batches, db_rows=rows)
        settle_embedded(streams[name])  # what was recorded, whatever the core counted (the rest: not stored)
    prev_run = previous.get("run") or {}
    info = {key: prev_run[key] for key in RUN_KEYS_KEPT if key in prev_run}
    info.update(
        db_rows=sum(s.rows for s in stored.values()),
        db_rows_spooled=0,
        closed_by="repair: its recorder was gone",
        closed_at=datetime.now(UTC).isoformat(),
    )
    ended = _ended_at(prev_run.get("ended_at"), stored)
    started = row.started_at or ended
    if folder is not None:
        return RecordedRun(db, folder, row.id, started, config).finish(info, streams, ended)
    run = {"id": row.id, "name": row.name, "dir": row.dir, "started_at": started.isoformat()}
    summary = summarise({**run, "ended_at": ended.isoformat(), **info}, streams)
    db.update_run(row.id, ended_at=ended, summary=summary)
    return summary


def _restore_stream(
    db: Database,
    row: RunRow,
    name: str,
    folder: Path | None,
    rel: str,
    settings: dict[str, Any],
    stored: StoredStream | None,
) -> tuple[StreamSummary, int, int]:
    """A stream's summary from its rows, its files rewritten from them if its folder is here;
    (summary, rows, npz batches)."""
    if folder is None:
        summary = StreamSummary(name)

        def count(batch: list[StoredRow]) -> None:
            for r in batch:
                summary.add_values(r.seq, r.t_capture, r.similarity, r.drift, snapshot=bool(r.snapshot_path))

        return summary, db.each_stored_row(row.id, name, count), 0
    own = folder if rel in ("", ".") else folder / rel
    StreamFiles.clear(own, stored.last_seq if stored is not None else -1)
    files = StreamFiles(
        name,
        own,
        folder,
        snapshot_interval=float(settings.get("snapshot_interval", 30.0)),
        embedding_interval=int(settings.get("embedding_interval", 100)),
    )

    def restore(batch: list[StoredRow]) -> None:
        for r in batch:
            files.restore(r)

    try:
        rows = db.each_stored_row(row.id, name, restore)
    finally:
        files.close()
    return files.summary, rows, files.batches.written


def _ended_at(said: Any, stored: dict) -> datetime:
    """When the run ended: as its last summary said, else its last frame's capture time, else now."""
    if isinstance(said, str):
        try:
            return datetime.fromisoformat(said)
        except ValueError:
            pass
    if stored:
        return datetime.fromtimestamp(max(s.last_t for s in stored.values()), tz=UTC)
    return datetime.now(UTC)
