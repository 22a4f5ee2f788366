"""FrameWriter's order of batches while one is being written on its thread and the database goes away.

The real outage (PostgreSQL stopped mid-run) is tested in tests/integration/test_recorder.py;
here a stand-in database that can be switched off at a chosen batch pins the ordering
down deterministically.
"""

import threading
import time
from collections import Counter

import numpy as np
import psycopg

from encoders.services.recorder.rows import from_spool, to_spool
from encoders.services.recorder.writer import FrameWriter, Inline, writer_thread
from encoders.shared.spool import Spool
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable
from encoders.shared.storage.frames import FrameRow

from ..conftest import wait_for


class SwitchableDatabase(Database):
    """Stands in for the database (no server: only what the writer calls). Takes batches while up
    (slowly, so that the next batch is built meanwhile)."""

    def __init__(self, fail_with=DatabaseUnavailable):
        self.dim = None
        self.up = True
        self.fail_with = fail_with
        self.seqs: list[int] = []
        self.threads: set[str] = set()

    def _check(self):
        if not self.up:
            raise self.fail_with("the database is away")

    def ensure_frames(self, dim):
        self._check()
        self.dim = dim

    def update_run(self, run_id, **fields):
        self._check()

    def write_rows(self, rows):
        self.threads.add(threading.current_thread().name)
        time.sleep(0.005)  # simulates: a write takes the server a moment
        self._check()
        self.seqs.extend(r.seq for r in rows)
        return Counter(r.stream for r in rows)


def ticked(writer: FrameWriter, condition):
    """A condition for wait_for that ticks the writer first, as the receive loop does."""

    def check() -> bool:
        writer.tick()
        return bool(condition())

    return check


def row(seq):
    return FrameRow(1, "cam0", seq, 1000.0 + seq, None, None, np.ones(4, np.float32), None, "w")


def durable_writer(db, spool_path, executor, **settings) -> tuple[FrameWriter, list[int]]:
    """A writer of batches of 10, and the seqs it says are durable (its on_durable), in the order said."""
    durable: list[int] = []
    writer = FrameWriter(
        db,
        Spool(spool_path),
        run_id=1,
        batch_rows=10,
        executor=executor,
        on_durable=lambda rows: durable.extend(r.seq for r in rows),
        **settings,
    )
    writer.set_model("m", 4)
    return writer, durable


def test_batches_reach_the_database_in_order_across_an_outage(tmp_path):
    db = SwitchableDatabase()
    writer = FrameWriter(
        db, Spool(tmp_path / "spool"), run_id=1, batch_rows=10, retry_max=0.1, executor=writer_thread()
    )
    writer.set_model("m", 4)
    for seq in range(50):
        writer.add(row(seq))
    db.up = False  # the batch in flight now fails on its thread; its rows must come before the next ones
    for seq in range(50, 100):
        writer.add(row(seq))
    wait_for(ticked(writer, lambda: writer.spooled > 0), 5, "the failed batch in the spool", interval=0.01)
    assert writer.outages == 1
    db.up = True
    for seq in range(100, 150):
        writer.add(row(seq))
    assert writer.close(5.0)
    assert db.seqs == list(range(150))
    assert writer.written == {"cam0": 150} and writer.spooled == 0
    assert not (tmp_path / "spool").exists()
    assert any(name.startswith("db-writer") for name in db.threads)  # written off the receive loop


def test_a_refusal_keeps_every_row_in_the_spool_in_order(tmp_path):
    db = SwitchableDatabase(fail_with=DatabaseRefused)
    writer = FrameWriter(db, Spool(tmp_path / "spool"), run_id=1, batch_rows=10, executor=writer_thread())
    writer.set_model("m", 4)
    for seq in range(30):
        writer.add(row(seq))
    db.up = False
    for seq in range(30, 60):
        writer.add(row(seq))
    writer.tick()
    assert not writer.close(0.2)  # refused: no point retrying
    assert isinstance(writer.fatal, DatabaseRefused)
    records, _ = Spool(tmp_path / "spool").read_batch(1000)
    assert [r["seq"] for r in records] == list(range(len(db.seqs), 60))
    assert db.seqs == list(range(len(db.seqs)))  # what got in did so in order


def test_inline_batches_are_written_in_the_caller(tmp_path):
    db = SwitchableDatabase()
    writer = FrameWriter(db, Spool(tmp_path / "spool"), run_id=1, batch_rows=5, executor=Inline())
    writer.set_model("m", 4)
    for seq in range(12):
        writer.add(row(seq))
    assert db.seqs == list(range(10))  # two full batches, already written
    assert writer.close(1.0) and db.seqs == list(range(12))
    assert db.threads == {threading.current_thread().name}


class GatedDatabase(SwitchableDatabase):
    """Holds every batch until the test opens the gate; records the size of each batch."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()  # a batch has reached the gate
        self.batches: list[int] = []

    def write_rows(self, rows):
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(rows))
        return super().write_rows(rows)


def test_rows_gather_while_a_batch_is_written_and_go_out_together(tmp_path):
    db = GatedDatabase()
    writer = FrameWriter(
        db, Spool(tmp_path / "spool"), run_id=1, batch_rows=10, max_waiting_batches=8, executor=writer_thread()
    )
    writer.set_model("m", 4)
    for seq in range(35):
        writer.add(row(seq))  # returns at once: the first batch is held at the gate, the rest wait in memory
    assert len(writer.pending) == 25
    db.gate.set()

    def all_written() -> bool:
        writer.tick()
        return sum(writer.written.values()) >= 35

    wait_for(all_written, 5, "the 35 rows written", interval=0.01)
    assert db.batches == [10, 25]  # one commit for everything that gathered
    assert writer.commits == 2
    assert db.seqs == list(range(35))
    assert writer.close(1.0)


def test_add_never_waits_and_the_writer_is_full_once_max_waiting_batches_are_held(tmp_path):
    db = GatedDatabase()
    writer = FrameWriter(
        db, Spool(tmp_path / "spool"), run_id=1, batch_rows=10, max_waiting_batches=2, executor=writer_thread()
    )
    writer.set_model("m", 4)
    for seq in range(40):
        writer.add(row(seq))  # returns at once: 10 rows in flight at the gate, 30 waiting
    assert writer.full and len(writer.pending) == 30 and db.batches == []
    # The receive loop takes no more records while it is full; a caller with nothing else to do waits for room.
    waiting = threading.Thread(target=writer.wait_for_room)
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # memory stays bounded: the database has taken nothing yet
    db.gate.set()
    waiting.join(5)
    assert not waiting.is_alive() and not writer.full
    assert writer.close(2.0)
    assert db.seqs == list(range(40))
    assert db.batches == [10, 20, 10]  # what gathered went out next: max_waiting_batches' worth at most a batch


class SlowRowsDatabase(SwitchableDatabase):
    """Takes 2 ms a row, as PostgreSQL does for rows that go into an HNSW index on a busy box:
    500 rows a second at the most; records the size of each batch."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def write_rows(self, rows):
        time.sleep(0.002 * len(rows))
        self.batches.append(len(rows))
        return super().write_rows(rows)


def test_rows_that_gathered_go_out_in_batches_the_database_writes_well_within_its_timeout(tmp_path):
    db = SlowRowsDatabase()
    writer = FrameWriter(
        db,
        Spool(tmp_path / "spool"),
        run_id=1,
        batch_rows=10,
        max_waiting_batches=100,
        warn_after=0.2,
        executor=writer_thread(),
    )
    writer.set_model("m", 4)
    for seq in range(10):
        writer.add(row(seq))  # the first batch: its time gives the pace
    wait_for(ticked(writer, lambda: writer.commits == 1), 5, "the first batch written", interval=0.01)
    for seq in range(10, 510):
        writer.add(row(seq))  # 500 rows gather: at 500 rows/s that is a second of writing, 5x warn_after
    wait_for(ticked(writer, lambda: sum(writer.written.values()) == 510), 30, "the 510 rows written", interval=0.01)
    assert writer.pace is not None and writer.pace <= 500
    # Half of warn_after's worth a batch at the most (50 rows at 500 rows/s), never fewer than batch_rows.
    assert db.batches[0] == 10 and all(10 <= n <= 50 for n in db.batches[1:]), db.batches
    assert db.seqs == list(range(510))
    assert writer.close(1.0)


def test_the_spool_is_replayed_on_the_writers_thread_without_holding_up_the_caller(tmp_path):
    db = GatedDatabase()
    db.gate.set()
    writer, durable = durable_writer(db, tmp_path / "spool", writer_thread(), retry_max=0.05)
    db.up = False
    for seq in range(30):
        writer.add(row(seq))
    wait_for(ticked(writer, lambda: writer.spooled == 30), 5, "every row in the spool", interval=0.01)
    db.up, db.batches = True, []
    db.gate.clear()  # the database is back, and slow: a replayed batch waits at the gate
    db.entered.clear()
    wait_for(ticked(writer, db.entered.is_set), 5, "a replayed batch at the gate")
    started = time.monotonic()
    for seq in range(30, 50):
        writer.add(row(seq))  # two batches' worth, behind the spool, durable at once: nothing waits for the database
    writer.tick()
    assert time.monotonic() - started < 0.5 and writer.spooled == 50 and durable == list(range(50))
    db.gate.set()
    wait_for(ticked(writer, lambda: writer.spooled == 0), 5, "the spool replayed", interval=0.01)
    assert db.seqs == list(range(50)) and max(db.batches) <= 10  # in order, a batch at a time
    assert durable == list(range(50))  # each said once
    assert writer.close(1.0)


def test_rows_are_said_durable_in_order_whether_committed_or_spooled(tmp_path):
    db = SwitchableDatabase()
    writer, durable = durable_writer(db, tmp_path / "spool", Inline(), retry_max=0.1)
    for seq in range(30):
        writer.add(row(seq))
    db.up = False  # the database goes away: rows become durable by going to the spool
    for seq in range(30, 60):
        writer.add(row(seq))
    writer.tick()
    in_spool = writer.spooled
    assert in_spool > 0 and durable == list(range(len(durable)))
    db.up = True
    for seq in range(60, 70):
        writer.add(row(seq))
    assert writer.close(5.0)
    assert durable == list(range(70))  # each row once, in the order added: the replay says nothing again
    assert db.seqs == list(range(70))


class PickyDatabase(SwitchableDatabase):
    """Refuses any batch holding one of ``bad`` as the server refuses a NaN in a vector (SQLSTATE 22000)."""

    def __init__(self, bad, error=psycopg.errors.DataException):
        super().__init__()
        self.bad, self.error = set(bad), error
        self.attempts = 0

    def write_rows(self, rows):
        self.attempts += 1
        refused = [r.seq for r in rows if r.seq in self.bad]
        if refused:
            cause = self.error(f"NaN not allowed in vector (seq {refused[0]})")
            raise DatabaseRefused(f"refused a write: {cause}") from cause
        return super().write_rows(rows)


def test_a_row_the_database_refuses_goes_to_quarantine_and_the_rest_is_written(tmp_path):
    db = PickyDatabase(bad={13, 27})
    writer, durable = durable_writer(db, tmp_path / "db_spool.msgpack", Inline())
    for seq in range(40):
        writer.add(row(seq))
        writer.tick()
    assert writer.close(2.0)
    assert db.seqs == sorted(set(range(40)) - {13, 27})  # in order; nothing held up behind the bad rows
    assert writer.fatal is None and writer.quarantined == 2
    assert durable == list(range(40))  # the batch was durable (spooled) before its bad row was found
    records, _ = Spool(tmp_path / "db_quarantine.msgpack").read_batch(10)
    assert [from_spool(r).seq for r in records] == [13, 27]  # kept, in the spool's own format
    assert not (tmp_path / "db_spool.msgpack").exists()
    assert db.attempts < 40  # found by halving the batch, not row by row


def test_a_refusal_that_is_not_a_rows_stops_the_writer_and_keeps_the_rows(tmp_path):
    db = PickyDatabase(bad={3}, error=psycopg.errors.InsufficientPrivilege)
    writer = FrameWriter(db, Spool(tmp_path / "db_spool.msgpack"), run_id=1, batch_rows=5, executor=Inline())
    writer.set_model("m", 4)
    for seq in range(10):
        writer.add(row(seq))
    assert not writer.close(0.2)
    assert isinstance(writer.fatal, DatabaseRefused) and writer.quarantined == 0
    records, _ = Spool(tmp_path / "db_spool.msgpack").read_batch(100)
    assert [r["seq"] for r in records] == list(range(10))
    assert not (tmp_path / "db_quarantine.msgpack").exists()


def test_a_spooled_record_that_is_no_row_is_set_aside_too(tmp_path):
    spool = Spool(tmp_path / "db_spool.msgpack")
    spool.append([to_spool(row(0)), {"not": "a row"}, to_spool(row(1))])
    db = SwitchableDatabase()
    writer = FrameWriter(db, spool, run_id=1, batch_rows=10, executor=Inline())
    writer.set_model("m", 4)
    assert writer.close(1.0)
    assert db.seqs == [0, 1] and writer.quarantined == 1
