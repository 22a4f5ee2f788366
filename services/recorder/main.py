"""The recorder service: metrics records and frames in; the run folder and database rows out.

settings -> database + run folder -> sockets -> loop -> shutdown. Every way out (streams
ended, SIGTERM/SIGINT, an error) flushes or spools the rows, writes the last npz, closes
drift.csv, writes summary.json and ends the run row.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq

from encoders.services.recorder.config import RecorderConfig
from encoders.shared import zmqio
from encoders.shared.runtime import log_settings, setup_logging, stop_on_signals
from encoders.shared.settings import mask_url, split_addrs

from . import embedded_db
from .db import Database, DatabaseRefused, DatabaseUnavailable, FrameWriter, replay_left_spools
from .recorder import Recorder, pipeline_settings
from .runfiles import create_run_dir
from .spool import SPOOL_NAME, Spool

LOG_EVERY_S = 10.0
FILE_FLUSH_S = 1.0
POLL_MS = 100
DRAIN_MAX = 500  # messages taken from one socket before looking at the other
DRAIN_AT_EXIT_S = 2.0
FRAMES_RCVHWM = 100  # snapshots are best effort: a slow recorder drops frames, never records


@dataclass
class Run:
    db: Database
    dir: Path
    id: int
    name: str  # the folder's name, unless the database had that one already
    started: datetime
    config: dict[str, Any]
    db_handle: Any  # the embedded server, kept alive while the run lasts


def run(cfg: RecorderConfig) -> int:
    log = setup_logging("recorder")
    log_settings(log, "recorder", cfg)
    stop = stop_on_signals()

    # Database first: a recorder that cannot store rows says so before anything is created.
    try:
        r = start_run(cfg, log)
    except (DatabaseUnavailable, DatabaseRefused, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("run %s (id %d) in %s", r.name, r.id, r.dir)

    writer = FrameWriter(
        r.db,
        Spool(r.dir / SPOOL_NAME),
        run_id=r.id,
        batch_rows=cfg.db_batch,
        flush_s=cfg.db_flush_s,
        retry_max=cfg.db_retry_max,
    )
    recorder = Recorder(r.dir, run_id=r.id, config=r.config, rows=writer, settings=cfg)
    counters = recorder.counters  # messages that do not decode are counted beside the recorder's own counts
    ctx = zmq.Context()
    sockets: list[zmq.Socket] = []
    exit_code = 0
    try:
        records = zmqio.open_socket(ctx, zmq.PULL, cfg.records, bind=False, linger=0)
        sockets.append(records)
        frames = None
        if split_addrs(cfg.frames):
            frames = zmqio.open_socket(
                ctx, zmq.SUB, split_addrs(cfg.frames), bind=False, linger=0, rcvhwm=FRAMES_RCVHWM, subscribe=[b"frame/"]
            )
            sockets.append(frames)
        poller = zmq.Poller()
        for sock in sockets:
            poller.register(sock, zmq.POLLIN)
        log.info("receiving records from %s and frames from %s", cfg.records, cfg.frames or "(none)")

        next_log = time.monotonic() + LOG_EVERY_S
        next_file_flush = time.monotonic() + FILE_FLUSH_S
        while not stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            # Frames first: a record's frame normally arrives just before it, and the snapshot needs it.
            if frames is not None and frames in ready:
                drain(frames, recorder, counters, topic=True, copy=False)
            if records in ready:
                drain(records, recorder, counters, topic=False, copy=True)
            recorder.tick()
            writer.tick()
            if writer.fatal is not None:
                raise writer.fatal
            now = time.monotonic()
            if now >= next_file_flush:
                recorder.flush_files()
                next_file_flush = now + FILE_FLUSH_S
            if now >= next_log:
                log_progress(log, recorder, writer, counters)
                next_log = now + LOG_EVERY_S
            if cfg.exit_after_streams and len(recorder.ended) >= cfg.exit_after_streams:
                log.info("%d stream(s) ended (%s): finishing", len(recorder.ended), ", ".join(sorted(recorder.ended)))
                break
        # Records already delivered to this process are recorded, not dropped with the socket.
        drain(records, recorder, counters, topic=False, copy=True, until=time.monotonic() + DRAIN_AT_EXIT_S)
    except DatabaseRefused as exc:
        log.error("stopping: %s", exc)
        exit_code = 1
    except Exception as exc:
        log.exception("recorder failed: %s", exc)
        exit_code = 1
    finally:
        for sock in sockets:
            sock.close(0)
        ctx.term()
        exit_code = max(exit_code, finish_run(log, cfg, r, recorder, writer))
        r.db.close()
    return exit_code


def start_run(cfg: RecorderConfig, log) -> Run:
    """Reach the database, write what earlier runs left in their spools, claim a run name and folder."""
    url, handle = embedded_db.database_url(cfg.database_url, cfg.runs_dir)
    db = Database.open(url, wait_s=cfg.db_connect_timeout)
    replay_left_spools(db, cfg.runs_dir, batch_rows=cfg.db_batch)
    started = datetime.now(UTC)
    claimed: list[tuple[int, str]] = []

    def claim(name: str) -> bool:  # the run row is inserted with the folder's name, both unique
        run_id = db.claim_run(name, started)
        if run_id is not None:
            claimed.append((run_id, name))
        return run_id is not None

    run_dir = create_run_dir(cfg.runs_dir, cfg.run_dir, claim)
    run_id, name = claimed[-1]
    if name != run_dir.name:
        log.warning("the database already has a run named %s: this one is %s", run_dir.name, name)
    config = {
        "run": {
            "id": run_id,
            "name": name,
            "dir": str(run_dir.resolve()),
            "started_at": started.isoformat(),
            "database": mask_url(url),
        },
        "model": None,  # learned from the first record
        "recorder": cfg.describe(),
        "pipeline": pipeline_settings(cfg.pipeline_config),
    }
    db.update_run(run_id, config=config)
    return Run(db, run_dir, run_id, name, started, config, handle)


def drain(sock: zmq.Socket, recorder: Recorder, counters: dict, *, topic: bool, copy: bool, until: float = 0.0) -> None:
    """Handle the messages waiting on ``sock``: at most DRAIN_MAX, or (``until``) all that come before then.
    ``copy``: records (~2 KB) are cheaper to take as bytes; frames (JPEGs) are taken without a copy."""
    for msg in zmqio.receive_waiting(sock, limit=DRAIN_MAX, until=until, topic=topic, counters=counters, copy=copy):
        recorder.on_message(msg)


def finish_run(log, cfg: RecorderConfig, r: Run, recorder: Recorder, writer: FrameWriter) -> int:
    """Everything a run leaves behind, on every way out. Returns 1 if rows are left in the spool."""
    recorder.close_files()
    try:
        all_written = writer.close(cfg.db_final_wait)
    except Exception:  # the spool is on disk whatever happened here
        log.exception("final database flush failed")
        all_written = False
    ended = datetime.now(UTC)
    rows = sum(writer.written.values())
    run = {
        "id": r.id,
        "name": r.name,
        "dir": str(r.dir.resolve()),
        "started_at": r.started.isoformat(),
        "ended_at": ended.isoformat(),
        "db_rows": rows,
        "db_rows_spooled": writer.spooled,
        "db_outages": writer.outages,
        "messages": dict(recorder.counters),
    }
    summary = recorder.write_summaries(run, writer.written)
    try:
        r.db.update_run(r.id, ended_at=ended, summary=summary)
    except (DatabaseUnavailable, DatabaseRefused) as exc:
        log.warning("could not mark the run ended in the database: %s", exc)
    log.info("run folder %s: %d records, %d rows written to the database", r.dir, recorder.counters["records"], rows)
    if not all_written:
        log.error(
            "%d rows could not be written to the database; they are kept in %s, and a recorder started "
            "later with --runs-dir %s writes them",
            writer.spooled,
            r.dir / SPOOL_NAME,
            r.dir.parent,
        )
        return 1
    return 0


def log_progress(log, recorder: Recorder, writer: FrameWriter, counters: dict) -> None:
    streams = (
        ", ".join(
            f"{name} {f.summary.records} records {f.summary.snapshots} snapshots {f.batches.written} npz"
            for name, f in recorder.streams.items()
        )
        or "no records yet"
    )
    bad = counters.get("bad_messages", 0)
    log.info(
        "%s; database: %d rows written in %d commits, %d waiting, %d spooled%s",
        streams,
        sum(writer.written.values()),
        writer.commits,
        len(writer.pending),
        writer.spooled,
        f"; {bad} bad messages dropped" if bad else "",
    )
