"""The recorder service: records from the core in; the run folder and database rows out; acknowledgements back.

settings -> database (reached, migrated, earlier spools written) -> the session with the
core -> on its Welcome, the run (resumed or new, recording.py), Ready, and the open runs no
recorder holds closed in the background (repair.py) -> receive loop -> finish.

Every way out (the core's Stop, SIGTERM/SIGINT, being replaced by a --takeover, an error)
flushes or spools the rows, writes the last npz, closes drift.csv, writes summary.json, ends
the run row, sends the last acknowledgements and says Bye. A database that cannot be
reached at start, an address that does not parse, a run folder that is taken, or a core
that refuses this recorder (another one is connected) exits 2 with one line.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import zmq

from encoders.shared import zmqio
from encoders.shared.disks import disk_problem, full_disk
from encoders.shared.exporter import LATENCY_BUCKETS, Exporter, Families
from encoders.shared.messages import largest_part
from encoders.shared.runtime import StartupError, service_main
from encoders.shared.session import CoreSession, SessionRefused
from encoders.shared.storage import embedded
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable

from .config import RecorderConfig
from .notify import Notifier
from .receiver import Receiver
from .recording import Recording, open_recording
from .repair import close_open_runs
from .replay import replay_left_spools
from .retention import Pruner
from .run import RunNameTaken

log = logging.getLogger("encoders.recorder")

# What cannot start a recorder: said in one line, exit code 2.
CANNOT_START = (
    embedded.NoDatabase,
    DatabaseUnavailable,
    DatabaseRefused,
    RunNameTaken,
    OSError,
    subprocess.SubprocessError,
)
TAKEOVER_HINT = "if another recorder is connected: stop it, or start this one with --takeover (ENCODERS_TAKEOVER)"


def run(cfg: RecorderConfig) -> int:
    return service_main("recorder", cfg, lambda stop: record(cfg, stop))


def record(cfg: RecorderConfig, stop: threading.Event) -> int:
    with ExitStack() as resources:
        ctx = zmq.Context()
        resources.callback(ctx.destroy, 0)  # every socket closed, then the context; after finish()
        # Addresses that do not parse, then the database: a recorder that cannot receive or store
        # rows says so before it says Hello, so no record is sent to it before it can record it.
        zmqio.check_connect_endpoints(ctx, [cfg.core])
        try:
            url = resources.enter_context(embedded.database(cfg.database_url, cfg.runs_dir))
            db = Database.open(url, wait_s=cfg.db_connect_timeout, statement_timeout=cfg.db_statement_timeout)
            resources.callback(db.close)
            replay_left_spools(db, cfg.runs_dir, batch_rows=cfg.db_batch)
        except CANNOT_START as exc:
            raise StartupError(why(exc, cfg.runs_dir)) from None
        pruner = Pruner(url, cfg.runs_dir, cfg.policy(), cfg.prune_every)
        pruner.start()
        resources.callback(pruner.close)
        # Its callbacks (what each Hello says, what a Welcome does) are the Receiver's.
        session = CoreSession.from_settings(
            ctx,
            cfg,
            "recorder",
            largest_part=largest_part(cfg.max_frame_bytes, batches=True),  # Records: thumbnails, vectors
            # No ZMTP heartbeats: this socket falls behind by design (records left unread while the database
            # catches up), and a recorder may be paused; their timeout would drop the link under the queued
            # records, and libzmq 4.3 may then abort this process as it reads them ("!_more", src/fq.cpp:80).
            # The session's own heartbeats judge the core's silence (the core's socket has none either).
            zmtp_heartbeats=False,
        )
        closer: list[threading.Thread] = []

        exporter = Exporter("recorder")
        db_write_s = exporter.histogram(
            "encoders_db_write_seconds", "Time one batch of rows took to write to PostgreSQL", buckets=LATENCY_BUCKETS
        )

        try:
            notifier = Notifier.from_config(cfg)
        except ValueError as exc:  # an MQTT URL that does not parse
            raise StartupError(str(exc)) from None
        resources.callback(notifier.close)

        def opener(named: str, keep_alive) -> Recording:
            recording = open_recording(cfg, db, url, named, keep_alive)
            recording.recorder.notify = notifier
            recording.writer.observe_write = lambda rows, seconds: db_write_s.observe(seconds)
            closer.append(close_left_runs(url, cfg.runs_dir, recording.run.name))
            return recording

        receiver = Receiver(
            session,
            opener,
            takeover=cfg.takeover,
            on_ready=lambda recording: announce(cfg.ready_file, recording) if cfg.ready_file else None,
        )
        exporter.collect(lambda f: recorder_families(receiver, f))
        exporter.health(lambda: recorder_health(receiver))
        exporter.start(cfg)
        resources.callback(exporter.stop)
        log.info("saying Hello to the core at %s", cfg.core)
        session.start(time.monotonic())
        exit_code = receive(receiver, stop, cfg.runs_dir, on_turn=exporter.beat)
        exporter.loop_ended()  # finishing (its last rows, the summary) may take a while: not a wedge
        if receiver.recording is not None:
            exit_code = max(exit_code, finish(cfg, receiver))
        session.close(time.monotonic(), "the recorder stops")
        for thread in closer:
            thread.join(timeout=60)
        return exit_code


def recorder_families(receiver: Receiver, f: Families) -> None:
    """The recorder's counts at a scrape (shared/exporter.py)."""
    f.counter("encoders_decode_errors", "Messages that did not decode", receiver.counters.get("bad_messages", 0),
              service="recorder")  # fmt: skip
    recording = receiver.recording
    if recording is None:
        return
    writer = recording.writer
    for stream, rows in list(writer.written.items()):
        f.counter("encoders_rows_recorded", "Rows written to PostgreSQL", rows, stream=stream)
    f.gauge("encoders_rows_spooled", "Rows in the recorder's spool, waiting for the database", writer.spooled)
    f.counter("encoders_rows_quarantined", "Rows the database refused for good", writer.quarantined)
    f.counter("encoders_db_outages", "Times the database became unreachable", writer.outages)
    f.counter("encoders_db_commits", "Batches committed to PostgreSQL", writer.commits)


def recorder_health(receiver: Receiver) -> str | None:
    """/healthz: what keeps rows from the database, if anything (the rows wait in the spool meanwhile)."""
    recording = receiver.recording
    if recording is None:
        return None
    writer = recording.writer
    if writer.disk_error is not None:
        return f"rows wait, not acknowledged: {writer.disk_error}"
    if writer.fatal is not None:
        return f"the database refuses the rows: {writer.fatal}"
    if writer.backoff.failing:
        return f"the database is unavailable; {writer.spooled} rows wait in the spool until it is back"
    return None


def why(exc: BaseException, runs_dir: str) -> str:
    """What stopped the recorder, in one line; a full disk named as such (its errors seldom say so)."""
    if isinstance(exc, OSError) and not isinstance(exc, subprocess.SubprocessError):
        return disk_problem(exc, runs_dir)
    full = full_disk(runs_dir)
    return f"{exc}; {full}" if full else str(exc)


def receive(
    receiver: Receiver, stop: threading.Event, runs_dir: str = ".", on_turn: Callable[[], None] = lambda: None
) -> int:
    """Until stopped (a signal, the core's Stop, another recorder taking over). 1 if the database refused the
    rows or a bug struck; StartupError when the core refuses this recorder, or no run can be opened."""
    try:
        while not stop.is_set() and receiver.stopping is None:
            on_turn()
            receiver.step()
        receiver.take(limit=100_000)  # records already delivered to this process are recorded, not dropped
        receiver.ask_pictures()
        receiver.await_pictures()  # the last records' snapshots, if they come
    except SessionRefused as exc:
        if receiver.recording is None:
            raise StartupError(f"{exc}; {TAKEOVER_HINT}") from None
        log.warning("%s: another recorder took over; finishing the run", exc)
    except CANNOT_START as exc:
        if receiver.recording is None:
            raise StartupError(why(exc, runs_dir)) from None
        log.error("stopping: %s", why(exc, runs_dir))
        return 1
    except Exception as exc:
        log.exception("recorder failed: %s", exc)
        return 1
    return 0


def finish(cfg: RecorderConfig, receiver: Receiver) -> int:
    """Everything a run leaves behind, on every way out; the last acknowledgements. 1 if rows are left in the spool."""
    recording = receiver.recording
    assert recording is not None
    all_written = recording.close(cfg.db_final_wait)
    receiver.send_acks()  # every row is durable now: committed, or in the spool
    return recording.finish(all_written)


def close_left_runs(url: str, runs_dir: str, own: str) -> threading.Thread:
    """Close, on a thread of its own (a long run takes a while), the open runs no live recorder holds."""

    def work() -> None:
        db = Database(url)
        try:
            close_open_runs(db, runs_dir, keep=frozenset({own}))
        except Exception as exc:  # a run left open is closed by the next recorder, or by hand
            log.warning("could not close the runs left open: %s", exc)
        finally:
            db.close()

    thread = threading.Thread(target=work, name="close-left-runs", daemon=True)
    thread.start()
    return thread


def announce(path: str, recording: Recording) -> None:
    """Tell whoever started this recorder (the all-in-one launcher) which run it records, and that it is ready."""
    run = recording.run
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps({"id": run.id, "name": run.name, "dir": str(run.dir.resolve())}))
    tmp.replace(path)
