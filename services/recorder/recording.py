"""The run a recorder records, with what writes it: opened once the core has welcomed it, finished on every way out.

``open_recording`` decides the run (docs/PROTOCOL.md, "The recorder"): the run the core
names in its Welcome is resumed when it is still open in the database, its folder is here
and no live recorder holds it (a recorder that crashed and was started again); otherwise a
new run is claimed. A resumed run's files are rewritten from its rows before anything else
is written (Recorder.resume), and each stream goes on from the highest seq stored.

``Recording`` holds the run, the Recorder (files), the FrameWriter (rows) and the
AckTracker (what the core is owed), wired together: the writer tells the tracker which rows
are durable. ``finish`` is the same on every way out: files closed, rows written or
spooled, summary.json written, the run's row ended.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoders.shared.masking import mask
from encoders.shared.spool import Spool
from encoders.shared.storage.connection import Database
from encoders.shared.storage.frames import FrameRow
from encoders.shared.storage.runs import RunRow

from .acks import AckTracker
from .config import RecorderConfig
from .recorder import Recorder
from .run import RecordedRun, folder_of, pipeline_settings
from .runlock import RunLock
from .writer import SPOOL_NAME, FrameWriter, give_up_after, writer_thread

log = logging.getLogger(__name__)


@dataclass
class Recording:
    run: RecordedRun
    recorder: Recorder
    writer: FrameWriter
    acks: AckTracker

    def info(self) -> dict[str, Any]:
        """What summary.json says of the run itself, besides its name and times."""
        return {
            "db_rows": sum(self.writer.written.values()),
            "db_rows_spooled": self.writer.spooled,
            "db_outages": self.writer.outages,
            "db_quarantined": self.writer.quarantined,
            "messages": dict(self.recorder.counters),
        }

    def write_summary(self) -> None:
        """summary.json as the run goes (its last counts survive a crash)."""
        try:
            self.run.write_summary(self.info(), self.recorder.stream_summaries(self.writer.written))
        except OSError as exc:
            log.warning("could not write %s's summary.json: %s", self.run.dir, exc)

    def close(self, final_wait: float) -> bool:
        """Files closed, every row written or spooled (durable: acknowledged). False if rows are left in the spool."""
        self.recorder.close_files()
        try:
            return self.writer.close(final_wait)
        except Exception:  # the spool is on disk whatever happened here
            log.exception("final database flush failed")
            return False

    def finish(self, all_written: bool) -> int:
        """summary.json written and the run's row ended (after ``close``). 1 if rows are left in the spool."""
        rows = sum(self.writer.written.values())
        self.run.finish(self.info(), self.recorder.stream_summaries(self.writer.written))
        log.info(
            "run folder %s: %d records, %d rows in the database",
            self.run.dir,
            self.recorder.counters["records"],
            rows,
        )
        if self.writer.quarantined:
            log.error(
                "%d rows the database refused are kept in %s",
                self.writer.quarantined,
                self.writer.quarantine.path,
            )
        if self.writer.unsaved:
            log.error(
                "%d rows are neither in the database nor on disk (%s): they were not acknowledged, so the core "
                "still holds their records",
                len(self.writer.unsaved),
                self.writer.disk_error,
            )
        if self.writer.spooled:
            log.error(
                "%d rows could not be written to the database; they are kept in %s, and a recorder started later "
                "with --runs-dir %s writes them",
                self.writer.spooled,
                self.run.dir / SPOOL_NAME,
                self.run.dir.parent,
            )
        return 0 if all_written else 1


def open_recording(
    cfg: RecorderConfig, db: Database, url: str, named: str, progress: Callable[[], None] = lambda: None
) -> Recording:
    """The run to record: ``named`` (the core's Welcome.run) resumed if it can be, else a new one.

    RunNameTaken, DatabaseUnavailable or DatabaseRefused when no run can be claimed.
    """
    resumed = _resumable(cfg, db, named) if named else None
    if resumed is not None:
        row, folder, lock = resumed
        try:
            run = RecordedRun.reopen(db, row, folder, lock)
        except BaseException:
            lock.release()
            raise
        log.info("resuming run %s (id %d) in %s, left open by a recorder that is gone", run.name, run.id, run.dir)
    else:
        run = RecordedRun.claim(
            db,
            runs_dir=cfg.runs_dir,
            run_dir=cfg.run_dir,
            settings=cfg.describe(),
            pipeline=pipeline_settings(cfg.pipeline_config),
            database=mask(url),
        )
        log.info("run %s (id %d) in %s", run.name, run.id, run.dir)
    try:
        recording = assemble(cfg, db, run, writer_thread())
        if resumed is not None:
            stored = db.stored_streams(run.id)
            recording.recorder.resume(db, stored, progress)
            recording.writer.written.update({name: s.rows for name, s in stored.items()})  # the run's, not this life's
    except BaseException:
        run.release()  # left open: the next recorder resumes it, or closes it
        raise
    return recording


def assemble(cfg: RecorderConfig, db: Database, run: RecordedRun, executor: Executor) -> Recording:
    """The run's Recorder, FrameWriter and AckTracker, wired: the writer says which rows are durable."""
    acks = AckTracker()

    def durable(rows: list[FrameRow]) -> None:
        for row in rows:
            acks.durable(row.stream, row.seq)

    writer = FrameWriter(
        db,
        Spool(run.dir / SPOOL_NAME),
        run_id=run.id,
        batch_rows=cfg.db_batch,
        flush_s=cfg.db_flush_s,
        retry_max=cfg.db_retry_max,
        executor=executor,
        on_durable=durable,
        warn_after=cfg.db_write_warn,
        give_up_after=give_up_after(cfg.db_statement_timeout),
    )
    return Recording(run, Recorder(run, writer, cfg, acks), writer, acks)


def _resumable(cfg: RecorderConfig, db: Database, name: str) -> tuple[RunRow, Path, RunLock] | None:
    """The run named, its folder and its lock, if it can be resumed here; None (said why) if not."""
    row = db.run_row(name)
    if row is None or row.ended_at is not None:
        log.info("the core's last run %s has ended: starting a new run", name)
        return None
    folder = folder_of(row, cfg.runs_dir)
    if folder is None:
        log.info("the core's last run %s is not in %s on this machine: starting a new run", name, cfg.runs_dir)
        return None
    if cfg.run_dir and Path(cfg.run_dir).resolve() != folder.resolve():
        log.info("--run-dir %s names another run than the core's last (%s): starting it", cfg.run_dir, name)
        return None
    lock = RunLock.take(folder)
    if lock is None:
        log.info("the core's last run %s is held by another recorder: starting a new run", name)
        return None
    try:
        row = db.run_row(name)  # again, now that its lock is ours: its recorder may have just ended it
    except BaseException:
        lock.release()
        raise
    if row is None or row.ended_at is not None:
        lock.release()
        log.info("the core's last run %s has ended: starting a new run", name)
        return None
    return row, folder, lock
