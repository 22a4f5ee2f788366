"""Records a core left in its state folder, stored into their run without a core.

A core that stops before its recorder acknowledged everything (the recorder hung through
the final drain, its disk was full) keeps what it held in its state folder's
``records.spool``, beside ``recorder.json``, which names the run they are for
(shared/core_state.py). A core started again on that folder sends them to its next
recorder. Where none is to come (the all-in-one command starts a new run each time; nobody
starts the pipeline again), this stores them as that run's recorder would have: the run is
taken up again (its files rewritten from its rows, Recorder.resume), each record goes
through the Recorder (drift.csv, npz batches, thumbnails, counts; a record stored already is
recognised and not stored twice), the rows are written (or kept in the run's own spool if
the database refuses), and the run is closed with its summary.json, keeping the time it had
ended at, if it had. The core's spool is deleted only then: a failure midway leaves it for
the next try.

Who calls it: the all-in-one command before it starts its core, and `encoders runs repair`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from encoders.shared import messages
from encoders.shared.core_state import RECORDS_SPOOL, StateDir, last_run_of
from encoders.shared.messages import DecodeError, EndOfStream, MetricsRecord, StreamStart
from encoders.shared.runtime import StartupError
from encoders.shared.spool import Spool, SpoolLocked
from encoders.shared.storage.connection import Database

from .config import RecorderConfig
from .recorder import Recorder
from .recording import assemble
from .run import RecordedRun, folder_of
from .runlock import RunLock
from .writer import SPOOL_NAME, writer_thread

log = logging.getLogger(__name__)

READ_BATCH = 1000
# The recorder's settings that shape a run's files: taken from the run's config.json, so that
# the records stored now land where and as the run's own recorder put the others.
FILE_SETTINGS = (
    "stream_dirs",
    "snapshot_interval",
    "embedding_interval",
    "thumbnails",
    "keyframe_drift",
    "keyframe_max_s",
)


def store_left_records(
    cfg: RecorderConfig, db: Database, state_dir: str | Path, progress: Callable[[], None] = lambda: None
) -> str | None:
    """Store the records a core left in ``state_dir`` into their run; what was done, in words (None:
    there were none). DatabaseUnavailable or DatabaseRefused when the database cannot take them
    (they stay in the core's spool)."""
    folder = Path(state_dir)
    if not (folder / RECORDS_SPOOL).exists():
        return None
    try:
        held = StateDir(folder)
    except StartupError:
        return f"{folder / RECORDS_SPOOL}: left alone, a core running on {folder} sends them to its recorder"
    try:
        spool = Spool(folder / RECORDS_SPOOL)
    except SpoolLocked:
        held.close()
        return f"{folder / RECORDS_SPOOL}: left alone, another process holds it"
    try:
        if not spool.pending:
            spool.delete()
            return None
        return _store(cfg, db, folder, spool, progress)
    finally:
        spool.close()
        held.close()


def _store(cfg: RecorderConfig, db: Database, state: Path, spool: Spool, progress: Callable[[], None]) -> str:
    where = state / RECORDS_SPOOL
    name = last_run_of(state)
    if not name:
        return (
            f"{where}: no recorder ever said which run they are for; a core started on {state} sends them to its next"
        )
    row = db.run_row(name)
    folder = folder_of(row, cfg.runs_dir) if row is not None else None
    if row is None or folder is None:
        return f"{where}: they are for run {name}, which is not in {cfg.runs_dir} on this machine: left"
    lock = RunLock.take(folder)
    if lock is None:
        return f"{where}: they are for run {name}, which a live recorder holds: left"
    run = RecordedRun.reopen(db, row, folder, lock)
    saved = run.config.get("recorder") or {}
    shaped = {k: saved[k] for k in FILE_SETTINGS if k in saved and type(saved[k]) is type(getattr(cfg, k))}
    executor = writer_thread()
    try:
        recording = assemble(dataclasses.replace(cfg, **shaped), db, run, executor)
        stored = db.stored_streams(run.id)
        recording.recorder.resume(db, stored, progress)
        recording.writer.written.update({stream: s.rows for stream, s in stored.items()})
        lives = Lives(recording.recorder)
        bad = 0
        end = spool.offset
        while True:
            records, end = spool.read_batch(READ_BATCH)
            if not records:
                break
            for record in records:
                try:
                    msg = messages.decode(record["parts"])
                except (DecodeError, TypeError, KeyError) as exc:
                    bad += 1
                    log.error("a record in %s does not decode (%s): skipped", where, exc)
                    continue
                if isinstance(msg, MetricsRecord | StreamStart | EndOfStream):
                    lives.take(msg)
            # No ingest is there to send a snapshot's picture: its rows go on without (counted missed).
            recording.recorder.give_up_pictures()
            recording.writer.tick()
            recording.writer.wait_for_room()  # add never waits for the database: memory bounded here
            progress()
            spool.offset = end  # read on: committed only once the run is closed
        lives.flush()
        taken = lives.taken
        all_written = recording.close(cfg.db_final_wait)
        summary = run.finish(
            recording.info(), recording.recorder.stream_summaries(recording.writer.written), row.ended_at
        )
    except BaseException:
        run.release()
        raise
    finally:
        executor.shutdown(wait=False)
    spool.commit(end)  # every record is in the run now: its rows, or the run's own spool
    rows = summary["totals"]["db_rows"]
    said = f"{taken} records a core left in {where} stored into run {name} ({rows} rows in all), which is closed"
    if bad:
        said += f"; {bad} did not decode"
    if not all_written:
        said += f"; rows the database refused wait in {folder / SPOOL_NAME}"
    log.info("%s", said)
    return said


class Lives:
    """Hands the records to the Recorder with the life of the core each belongs to.

    A live recorder learns the core's life from its Welcome, and counts a stream's start and
    end in it; here it comes from the records themselves (each carries ``core``), so a start
    waits for its stream's first record, and an end takes its stream's last record's life.
    """

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.life_of: dict[str, str] = {}
        self.last = ""
        self.starts: list[StreamStart] = []
        self.taken = 0

    def take(self, msg: MetricsRecord | StreamStart | EndOfStream) -> None:
        self.taken += 1
        if isinstance(msg, StreamStart):
            self.starts.append(msg)
            return
        if isinstance(msg, MetricsRecord):
            self.life_of[msg.stream] = self.last = msg.core or self.last
        self.flush(msg.stream)
        self._hand(msg, self.life_of.get(msg.stream, self.last))

    def flush(self, stream: str | None = None) -> None:
        """The starts waiting (of ``stream``, or all), in their life."""
        waiting = [s for s in self.starts if stream is None or s.stream == stream]
        self.starts = [s for s in self.starts if s not in waiting]
        for start in waiting:
            self._hand(start, self.life_of.get(start.stream, self.last))

    def _hand(self, msg: MetricsRecord | StreamStart | EndOfStream, life: str) -> None:
        self.recorder.core = life
        self.recorder.on_message(msg)
