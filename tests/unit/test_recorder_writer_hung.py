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

from encoders.services.recorder.writer import PAUSE_S, FrameWriter, give_up_after, writer_thread
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


def hung_writer(db: HungDatabase, tmp_path, now: list[float], **settings) -> FrameWriter:
    """A writer of batches of 4 on its own thread, on the clock ``now[0]``: a batch is said after 10 s, cut after 40."""
    writer = FrameWriter(
        db,
        Spool(tmp_path / "spool"),
        run_id=1,
        batch_rows=4,
        executor=writer_thread(),
        clock=lambda: now[0],
        warn_after=10.0,
        give_up_after=40.0,
        **settings,
    )
    writer.set_model("m", 4)
    return writer


def test_a_batch_that_hangs_is_said_once_then_cut_spooled_and_written_later(tmp_path, caplog):
    db = HungDatabase()
    now = [0.0]
    writer = hung_writer(db, tmp_path, now, retry_max=0.1)
    with caplog.at_level(logging.WARNING, logger="encoders.services.recorder.writer"):
        for seq in range(4):
            writer.add(row(seq))  # the batch goes out on the writer's thread, and hangs there
        for t in range(1, 40):
            now[0] = float(t)
            writer.tick()  # the receive loop goes on (it ticks every turn): nothing here waits for the batch
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


def test_a_pause_of_the_recorder_itself_is_not_taken_for_a_hung_database(tmp_path):
    """A recorder stopped (SIGSTOP, a frozen VM) with a batch in flight: woken, the batch has had no time to
    finish, and is not cut for the pause; a database that then hangs is cut as it would have been."""
    db = HungDatabase()
    now = [0.0]
    writer = hung_writer(db, tmp_path, now)
    for seq in range(4):
        writer.add(row(seq))
    now[0] = 60.0  # the whole process was stopped for a minute
    writer.tick()
    assert db.aborts == 0 and writer.slow_writes == 0
    pause = 60.0 - PAUSE_S  # left out of the batch's time
    for t in range(61, int(pause + 40.0)):
        now[0] = float(t)
        writer.tick()
    assert db.aborts == 0 and writer.slow_writes == 1
    now[0] = pause + 40.0
    writer.tick()
    assert db.aborts == 1
    db.hung = False
    assert writer.close(5.0) and db.seqs == [0, 1, 2, 3]


def test_a_caller_waiting_for_room_behind_a_hung_batch_waits_no_longer_than_the_bound(tmp_path, caplog):
    """Rows gathered to their bound while the batch hangs: the writer is full, and a caller that waits for
    room (it has nothing else to do) waits only until the batch is given up (its rows, and the rest, to the spool)."""
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
            writer.add(row(seq))  # the 4 in flight hang; 12 wait: past the bound of 8
        assert writer.full and time.monotonic() - started < 0.4  # adding never waits
        writer.wait_for_room()
    waited = time.monotonic() - started
    assert 0.4 < waited < 10, waited
    assert not writer.full and db.aborts == 1 and writer.spooled >= 4
    assert any("has been writing" in r.getMessage() for r in caplog.records)
    db.hung = False
    assert writer.close(5.0)
    assert db.seqs == list(range(16))


def test_without_a_statement_timeout_a_batch_is_never_cut():
    assert give_up_after(0) is None
    assert give_up_after(30.0) == 40.0
