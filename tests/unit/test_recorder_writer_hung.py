"""Issue #22: a database that hangs (a batch that never finishes) is said in the log while the batch is
still being written, and past a bound the batch's connection is cut: its rows go to the spool and are
written once the database answers, nothing lost. A stand-in database here; the real one (a backend
stopped with SIGSTOP, a table locked) in tests/integration/test_db_hung.py."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import numpy as np

from encoders.services.recorder.writer import FrameWriter, give_up_after, writer_thread
from encoders.shared.spool import Spool
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseUnavailable
from encoders.shared.storage.frames import FrameRow

from ..conftest import wait_for


class HungDatabase(Database):
    """Stands in for a server that stops answering: while ``hung``, a batch waits until its
    connection is cut (``abort``), and then fails as a cut connection does."""

    def __init__(self) -> None:
        self.dim = None
        self.target = "host=db port=5432 database=frames user=rec"
        self.hung = True
        self.cut = threading.Event()
        self.aborts = 0
        self.seqs: list[int] = []

    def ensure_frames(self, dim):
        self.dim = dim

    def update_run(self, run_id, **fields):
        pass

    def abort(self) -> bool:
        self.aborts += 1
        self.cut.set()
        return True

    def write_rows(self, rows):
        if self.hung:
            self.cut.wait(30)
            self.cut.clear()
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        self.seqs.extend(r.seq for r in rows)
        return Counter(r.stream for r in rows)


def ticked(writer: FrameWriter, condition):
    """A condition for wait_for that ticks the writer first, as the receive loop does."""

    def check() -> bool:
        writer.tick()
        return bool(condition())

    return check


def row(seq: int) -> FrameRow:
    return FrameRow(1, "cam0", seq, 1000.0 + seq, None, None, np.ones(4, np.float32), None, "w")


def test_a_batch_that_hangs_is_said_once_then_cut_spooled_and_written_later(tmp_path, caplog):
    db = HungDatabase()
    now = [0.0]
    writer = FrameWriter(
        db,
        Spool(tmp_path / "spool"),
        run_id=1,
        batch_rows=4,
        retry_max=0.1,
        executor=writer_thread(),
        clock=lambda: now[0],
        warn_after=10.0,
        give_up_after=40.0,
    )
    writer.set_model("m", 4)
    with caplog.at_level(logging.WARNING, logger="encoders.services.recorder.writer"):
        for seq in range(4):
            writer.add(row(seq))  # the batch goes out on the writer's thread, and hangs there
        for t in (5.0, 10.0, 11.0, 39.0):
            now[0] = t
            writer.tick()  # the receive loop goes on: nothing here waits for the batch
        slow = [r.getMessage() for r in caplog.records if "has been writing" in r.getMessage()]
        assert len(slow) == 1 and "a batch of 4 rows" in slow[0] and db.target in slow[0]
        assert writer.slow_writes == 1 and db.aborts == 0 and writer.spooled == 0
        now[0] = 40.0
        writer.tick()  # past the bound: its connection is cut
        assert db.aborts == 1 and writer.writes_cut == 1
        wait_for(ticked(writer, lambda: writer.spooled == 4), 10, "the cut batch's rows in the spool")
    assert writer.outages == 1 and db.seqs == []
    db.hung = False  # the database answers again: the spool is replayed
    now[0] = 50.0
    wait_for(ticked(writer, lambda: writer.spooled == 0), 10, "the spool replayed")
    assert writer.close(1.0) and db.seqs == [0, 1, 2, 3]


def test_a_caller_held_up_by_a_hung_batch_waits_no_longer_than_the_bound(tmp_path, caplog):
    """Rows gathered to their bound while the batch hangs: the caller waits for it, but only until
    the batch is given up, and then goes on (the rows to the spool)."""
    db = HungDatabase()
    writer = FrameWriter(
        db,
        Spool(tmp_path / "spool"),
        run_id=1,
        batch_rows=4,
        max_waiting_batches=2,
        executor=writer_thread(),
        warn_after=0.2,
        give_up_after=0.5,
    )
    writer.set_model("m", 4)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="encoders.services.recorder.writer"):
        for seq in range(16):
            writer.add(row(seq))  # the 4 in flight hang; 8 more are the bound: then the caller waits
    waited = time.monotonic() - started
    assert 0.4 < waited < 10, waited
    assert db.aborts == 1 and writer.spooled >= 4
    assert any("has been writing" in r.getMessage() for r in caplog.records)
    db.hung = False
    assert writer.close(5.0)
    assert db.seqs == list(range(16))


def test_without_a_statement_timeout_a_batch_is_never_cut():
    assert give_up_after(0) is None
    assert give_up_after(30.0) == 40.0
