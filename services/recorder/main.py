"""The recorder service: metrics records and frames in; the run folder and database rows out.

settings -> database (reached, migrated, earlier spools written) -> the run claimed -> sockets
-> receive loop -> finish. Every way out (streams ended, SIGTERM/SIGINT, an error) flushes or
spools the rows, writes the last npz, closes drift.csv, writes summary.json and ends the run
row. A database that cannot be reached at start, or a run folder that is taken, exits 2.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from contextlib import ExitStack
from pathlib import Path

import zmq

from encoders.shared import zmqio
from encoders.shared.runtime import StartupError, service_main
from encoders.shared.settings import mask_url, split_addrs
from encoders.shared.storage import embedded
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable

from .config import RecorderConfig
from .receiver import Receiver
from .recorder import Recorder
from .replay import replay_left_spools
from .run import RecordedRun, RunNameTaken, pipeline_settings
from .spool import SPOOL_NAME, Spool
from .writer import FrameWriter, writer_thread

log = logging.getLogger("encoders.recorder")

FRAMES_RCVHWM = 100  # snapshots are best effort: a slow recorder drops frames, never records
# What cannot start a recorder: said in one line, exit code 2.
CANNOT_START = (
    embedded.NoDatabase,
    DatabaseUnavailable,
    DatabaseRefused,
    RunNameTaken,
    OSError,
    subprocess.SubprocessError,
)


def run(cfg: RecorderConfig) -> int:
    return service_main("recorder", cfg, lambda stop: record(cfg, stop))


def record(cfg: RecorderConfig, stop: threading.Event) -> int:
    with ExitStack() as resources:
        ctx = zmq.Context()
        resources.callback(ctx.destroy, 0)  # every socket closed, then the context; after finish()
        # Addresses that do not parse, then the database: a recorder that cannot receive or store
        # rows says so before a run is claimed. Its sockets connect only once the run is claimed,
        # so no record is taken from metrics before it can be recorded.
        zmqio.check_connect_endpoints(ctx, [cfg.records, *split_addrs(cfg.frames)])
        try:
            url = resources.enter_context(embedded.database(cfg.database_url, cfg.runs_dir))
            db = Database.open(url, wait_s=cfg.db_connect_timeout)
            resources.callback(db.close)
            replay_left_spools(db, cfg.runs_dir, batch_rows=cfg.db_batch)
            run = RecordedRun.claim(
                db,
                runs_dir=cfg.runs_dir,
                run_dir=cfg.run_dir,
                settings=cfg.describe(),
                pipeline=pipeline_settings(cfg.pipeline_config),
                database=mask_url(url),
            )
        except CANNOT_START as exc:
            raise StartupError(str(exc)) from None
        log.info("run %s (id %d) in %s", run.name, run.id, run.dir)
        writer = FrameWriter(
            db,
            Spool(run.dir / SPOOL_NAME),
            run_id=run.id,
            batch_rows=cfg.db_batch,
            flush_s=cfg.db_flush_s,
            retry_max=cfg.db_retry_max,
            executor=writer_thread(),
        )
        recorder = Recorder(run, writer, cfg)
        exit_code = 0
        try:
            receiver = Receiver(*open_sockets(ctx, cfg), recorder, writer)
            if cfg.ready_file:
                announce(cfg.ready_file, run)
            exit_code = receive(cfg, receiver, stop)
        finally:
            exit_code = max(exit_code, finish(cfg, run, recorder, writer))
        return exit_code


def open_sockets(ctx: zmq.Context, cfg: RecorderConfig) -> tuple[zmq.Socket, zmq.Socket | None]:
    """The PULL for metrics' records and, if any frame endpoint is given, the SUB for snapshots."""
    records = zmqio.open_socket(ctx, zmq.PULL, cfg.records, bind=False, linger=0)
    frames = None
    if split_addrs(cfg.frames):
        frames = zmqio.open_socket(
            ctx,
            zmq.SUB,
            split_addrs(cfg.frames),
            bind=False,
            linger=0,
            rcvhwm=FRAMES_RCVHWM,
            subscribe=[b"frame/"],
        )
    log.info("receiving records from %s and frames from %s", cfg.records, cfg.frames or "(none)")
    return records, frames


def announce(path: str, run: RecordedRun) -> None:
    """Tell whoever started this recorder (the all-in-one launcher) which run it records, and that it is ready."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps({"id": run.id, "name": run.name, "dir": str(run.dir.resolve())}))
    tmp.replace(path)


def receive(cfg: RecorderConfig, receiver: Receiver, stop: threading.Event) -> int:
    """Until stopped or every expected stream has ended. 1 if the database refused the rows or a bug struck."""
    try:
        while not stop.is_set():
            receiver.step()
            ended = receiver.recorder.ended
            if cfg.exit_after_streams and len(ended) >= cfg.exit_after_streams:
                log.info("%d stream(s) ended (%s): finishing", len(ended), ", ".join(sorted(ended)))
                break
        receiver.drain_records()
    except DatabaseRefused as exc:
        log.error("stopping: %s", exc)
        return 1
    except Exception as exc:
        log.exception("recorder failed: %s", exc)
        return 1
    return 0


def finish(cfg: RecorderConfig, run: RecordedRun, recorder: Recorder, writer: FrameWriter) -> int:
    """Everything a run leaves behind, on every way out. Returns 1 if rows are left in the spool."""
    recorder.close_files()
    try:
        all_written = writer.close(cfg.db_final_wait)
    except Exception:  # the spool is on disk whatever happened here
        log.exception("final database flush failed")
        all_written = False
    rows = sum(writer.written.values())
    run.finish(
        {
            "db_rows": rows,
            "db_rows_spooled": writer.spooled,
            "db_outages": writer.outages,
            "messages": dict(recorder.counters),
        },
        recorder.stream_summaries(writer.written),
    )
    log.info("run folder %s: %d records, %d rows written to the database", run.dir, recorder.counters["records"], rows)
    if not all_written:
        log.error(
            "%d rows could not be written to the database; they are kept in %s, and a recorder started later with "
            "--runs-dir %s writes them",
            writer.spooled,
            run.dir / SPOOL_NAME,
            run.dir.parent,
        )
        return 1
    return 0
