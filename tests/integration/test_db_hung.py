"""Issue #22: a database that hangs is bounded, said, and survived, against a real PostgreSQL (pgserver).

- a table someone holds locked: the server cancels a statement past the statement timeout, for the
  readers' connections as for the recorder's, and the recorder's batch goes to the spool until the
  lock is released;
- a backend that does not answer at all (stopped with SIGSTOP: nothing on the server side can
  cancel anything): the writer says so while the batch is still being written, then cuts its
  connection; the rows go to the spool and are written on a new connection, nothing lost;
- migrations are never limited by the statement timeout (they may build an index over every row).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest

from encoders.services.recorder.writer import FrameWriter, writer_thread
from encoders.shared.spool import Spool
from encoders.shared.storage.connection import Database, connect
from encoders.shared.storage.errors import DatabaseUnavailable
from encoders.shared.storage.frames import FrameRow
from encoders.shared.storage.schema import ADVISORY_LOCK_KEY, MIGRATIONS
from encoders.shared.storage.store import reading

from ..conftest import wait_for
from .recorder_helpers import DIM, T0

# Fixtures: pg and db_url (tests/integration/conftest.py).
WRITER_LOG = "encoders.services.recorder.writer"


def make_row(run_id: int, seq: int) -> FrameRow:
    v = np.random.default_rng(seq).standard_normal(DIM).astype(np.float32)
    return FrameRow(run_id, "cam0", seq, T0 + seq, None, None, v / np.linalg.norm(v), None, "w")


def stored(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [s for (s,) in conn.execute("SELECT seq FROM frames ORDER BY seq")]


def ticking(writer: FrameWriter, condition, timeout: float, what: str) -> None:
    """The receive loop's ticks until ``condition()``; each tick must come back at once."""

    def tick() -> bool:
        started = time.monotonic()
        writer.tick()
        assert time.monotonic() - started < 2.0, "a tick waited on the database"
        return bool(condition())

    wait_for(tick, timeout, what, interval=0.02)


@pytest.mark.timeout(60)
def test_a_statement_on_a_locked_table_is_cancelled_for_readers_and_the_recorder(db_url):
    db = Database.open(db_url, wait_s=5, statement_timeout=0.5)
    run_id = db.claim_run("locked-runs", datetime.now(UTC))
    assert run_id is not None
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")  # held until this transaction ends
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="statement timeout"):
            db.update_run(run_id, model="m", dim=DIM)
        reader = connect(db_url, statement_timeout=0.5)
        with pytest.raises(psycopg.errors.QueryCanceled):
            reader.execute("SELECT count(*) FROM runs")
        reader.close()
        with reading(db_url, statement_timeout=0.5) as store, pytest.raises(psycopg.errors.QueryCanceled):
            store.conn.execute("SELECT count(*) FROM runs")
        assert time.monotonic() - started < 10  # three waits of half a second, not three without end
        locker.rollback()
    db.update_run(run_id, model="m", dim=DIM)  # the lock gone: the same connection goes on
    db.close()


@pytest.mark.timeout(60)
def test_a_url_s_own_options_are_kept_beside_the_statement_timeout(db_url):
    url = db_url + ("&" if "?" in db_url else "?") + "options=-c%20application_name%3Dmine"
    conn = connect(url, statement_timeout=1.5)
    assert conn.execute("SHOW statement_timeout").fetchone() == ("1500ms",)
    assert conn.execute("SHOW application_name").fetchone() == ("mine",)
    conn.close()


@pytest.mark.timeout(60)
def test_migrations_are_not_limited_by_the_statement_timeout(db_url):
    """A recorder starting while another holds the migrations' lock (building an index, say) waits
    for it, past its statement timeout, rather than failing."""
    locker = psycopg.connect(db_url, autocommit=True)
    locker.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    release = threading.Timer(2.0, lambda: locker.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,)))
    release.start()
    try:
        db = Database(db_url, statement_timeout=0.5)
        started = time.monotonic()
        db.migrate()  # once, not tried again (as Database.open would)
        assert time.monotonic() - started >= 1.5  # it waited for the lock, past its statement timeout
        assert [v for v, _, _ in db.schema_versions()] == [m.version for m in MIGRATIONS]
        assert db.run(lambda conn: conn.execute("SHOW statement_timeout").fetchone()) == ("500ms",)
        db.close()
    finally:
        release.join()
        locker.close()


@pytest.mark.timeout(90)
def test_a_batch_to_a_locked_frames_table_is_cancelled_spooled_and_written_once_released(tmp_path, db_url):
    """The lock timeout of a batch set far off: the statement timeout is what ends the wait."""
    db = Database.open(db_url, wait_s=5, statement_timeout=0.5)
    db.lock_timeout_s = 60
    run_id = db.claim_run("locked-frames", datetime.now(UTC))
    assert run_id is not None
    writer = FrameWriter(db, Spool(tmp_path / "spool"), run_id=run_id, batch_rows=4, retry_max=0.5,
                         executor=writer_thread())  # fmt: skip
    writer.set_model("m", DIM)
    for seq in range(4):
        writer.add(make_row(run_id, seq))
    ticking(writer, lambda: writer.written["cam0"] == 4, 20, "the first batch written")
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE frames IN ACCESS EXCLUSIVE MODE")
        for seq in range(4, 8):
            writer.add(make_row(run_id, seq))
        ticking(writer, lambda: writer.spooled == 4, 20, "the cancelled batch's rows in the spool")
        assert writer.outages == 1
        locker.rollback()
    ticking(writer, lambda: writer.spooled == 0, 30, "the spool written once the lock is gone")
    assert writer.close(5.0)
    assert stored(db_url) == list(range(8))
    db.close()


@pytest.mark.timeout(90)
def test_a_backend_that_stops_answering_is_said_cut_and_its_rows_written_again(tmp_path, db_url, caplog):
    db = Database.open(db_url, wait_s=5, statement_timeout=1.0)
    run_id = db.claim_run("stopped-backend", datetime.now(UTC))
    assert run_id is not None
    writer = FrameWriter(db, Spool(tmp_path / "spool"), run_id=run_id, batch_rows=4, retry_max=0.5,
                         executor=writer_thread(), warn_after=0.5, give_up_after=2.0)  # fmt: skip
    writer.set_model("m", DIM)
    for seq in range(4):
        writer.add(make_row(run_id, seq))
    ticking(writer, lambda: writer.written["cam0"] == 4, 20, "the first batch written")
    backend = db.run(lambda conn: conn.info.backend_pid)  # the server process of the writer's connection
    os.kill(backend, signal.SIGSTOP)  # it reads nothing and cancels nothing: its statement timeout cannot fire
    try:
        with caplog.at_level(logging.WARNING, logger=WRITER_LOG):
            for seq in range(4, 8):
                writer.add(make_row(run_id, seq))
            ticking(writer, lambda: writer.slow_writes == 1, 20, "the slow batch said")
            assert writer.spooled == 0  # said while it is still being written
            ticking(writer, lambda: writer.spooled == 4, 20, "the batch cut and its rows in the spool")
        said = [r.getMessage() for r in caplog.records]
        assert any("a batch of 4 rows has been writing" in m for m in said), said
        assert any("connection is cut" in m for m in said), said
        assert writer.writes_cut == 1 and writer.outages == 1
        # A new connection (a backend that answers) takes the spool, while the stopped one still is.
        ticking(writer, lambda: writer.spooled == 0, 30, "the spooled rows written on a new connection")
    finally:
        os.kill(backend, signal.SIGCONT)  # released: it finds its client gone and ends
    for seq in range(8, 12):
        writer.add(make_row(run_id, seq))
    assert writer.close(10.0)
    assert stored(db_url) == list(range(12))
    db.close()
