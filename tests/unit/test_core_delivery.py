"""Records held for the recorder until acknowledged (delivery.py): resent to a new session, spooled past the bound."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from encoders.services.metrics.delivery import Delivery
from encoders.shared.messages import EndOfStream, Message, MetricsRecord, Records, StreamStart, rows_of


def record(stream: str, seq: int) -> MetricsRecord:
    return MetricsRecord(
        stream, seq, float(seq), float(seq), "w", "m", None, None, vector=np.ones(4, np.float32), thumbnail=b"t"
    )


class Recorder:
    """What a recorder session got (a Records as its records): ``send`` as the core's pump calls
    it; refuses messages past ``room``."""

    def __init__(self, room: int = 10**9) -> None:
        self.got: list[Message] = []
        self.messages: list[Message] = []
        self.room = room

    def send(self, msg: Message) -> bool:
        if len(self.messages) >= self.room:
            return False
        self.messages.append(msg)
        self.got.extend(rows_of(msg))
        return True

    def order(self) -> list[tuple[str, str, int]]:
        out = []
        for m in self.got:
            seq = m.first_seq if isinstance(m, StreamStart) else m.last_seq if isinstance(m, EndOfStream) else m.seq  # type: ignore[attr-defined]
            out.append((m.KIND, m.stream, seq))  # type: ignore[attr-defined]
        return out


def test_records_are_held_until_acked_and_sent_only_to_a_ready_session(tmp_path):
    d = Delivery(tmp_path / "records.spool", hold=100)
    d.add(StreamStart("cam0", 0))
    for seq in range(3):
        d.add(record("cam0", seq))
    d.add(EndOfStream("cam0", 2))
    rec = Recorder()
    assert d.pump(rec.send) == 0  # no recorder ready yet
    d.start_session()
    assert d.pump(rec.send) == 5
    assert rec.order() == [("start", "cam0", 0), ("metrics", "cam0", 0), ("metrics", "cam0", 1),
                          ("metrics", "cam0", 2), ("eos", "cam0", 2)]  # fmt: skip
    assert d.pump(rec.send) == 0  # sent once per session
    d.ack("cam0", 1, ended=False)
    assert d.stats()["records_held"] == 2 and not d.settled
    d.ack("cam0", 2, ended=False)
    assert d.stats()["records_held"] == 1  # the end needs an ended ack
    d.ack("cam0", 2, ended=True)
    assert d.settled and d.stats()["records_in_flight"] == 0


def test_a_new_session_gets_everything_unacknowledged_again_oldest_first(tmp_path):
    d = Delivery(tmp_path / "records.spool", hold=100)
    for seq in range(4):
        d.add(record("cam0", seq))
        d.add(record("cam1", seq))
    d.start_session()
    d.pump(Recorder().send)
    d.ack("cam0", 1, ended=False)
    d.end_session()  # the recorder restarted
    d.start_session()
    again = Recorder()
    d.pump(again.send)
    assert again.order() == [("metrics", "cam1", 0), ("metrics", "cam1", 1), ("metrics", "cam0", 2),
                            ("metrics", "cam1", 2), ("metrics", "cam0", 3), ("metrics", "cam1", 3)]  # fmt: skip


def test_an_ack_from_before_a_resend_skips_what_it_covers(tmp_path):
    d = Delivery(tmp_path / "records.spool", hold=100)
    for seq in range(3):
        d.add(record("cam0", seq))
    d.ack("cam0", 1, ended=False)  # a recorder's announced floor, before anything was sent to it
    d.start_session()
    rec = Recorder()
    d.pump(rec.send)
    assert rec.order() == [("metrics", "cam0", 2)]


def test_at_most_a_window_in_flight_and_a_full_pipe_resumes_where_it_stopped(tmp_path):
    d = Delivery(tmp_path / "records.spool", hold=100, window=3)
    for seq in range(6):
        d.add(record("cam0", seq))
    d.start_session()
    rec = Recorder(room=0)
    assert d.pump(rec.send) == 0  # the connection is full
    rec.room = 100
    assert d.pump(rec.send) == 3  # the window: three in flight, as one Records
    assert [type(m) for m in rec.messages] == [Records]
    d.ack("cam0", 1, ended=False)
    assert d.pump(rec.send) == 2
    assert [k[2] for k in rec.order()] == [0, 1, 2, 3, 4]


def test_past_the_bound_the_oldest_go_to_the_spool_and_come_back_in_order(tmp_path, caplog):
    spool = tmp_path / "records.spool"
    d = Delivery(spool, hold=10)
    with caplog.at_level(logging.WARNING):
        for seq in range(25):
            d.add(record("cam0" if seq % 2 else "cam1", seq))
    assert spool.exists() and d.stats()["records_held"] <= 10 and d.stats()["records_spooled"] >= 15
    assert "more than 10 records not acknowledged by a recorder: the oldest go to" in caplog.text
    d.start_session()
    rec = Recorder()
    d.pump(rec.send)
    assert [k[2] for k in rec.order()] == list(range(25))  # spool first, then memory: every stream in order
    got = rec.got[0]
    assert isinstance(got, MetricsRecord) and got.thumbnail == b"t" and got.vector.tolist() == [1, 1, 1, 1]
    d.ack("cam0", 23, ended=False)
    assert not d.settled
    d.ack("cam1", 24, ended=False)
    assert d.settled and not spool.exists()  # committed and deleted once all of it is acknowledged


def test_records_in_flight_spooled_are_not_sent_twice_in_a_session_but_are_after_a_new_one(tmp_path):
    d = Delivery(tmp_path / "records.spool", hold=4)
    d.start_session()
    rec = Recorder()
    for seq in range(12):  # sent as they come, never acknowledged: memory overflows with sent records
        d.add(record("cam0", seq))
        d.pump(rec.send)
    assert [k[2] for k in rec.order()] == list(range(12))
    assert d.stats()["records_held"] <= 4
    d.end_session()
    d.start_session()
    again = Recorder()
    d.pump(again.send)
    assert [k[2] for k in again.order()] == list(range(12))
    d.ack("cam0", 11, ended=False)
    assert d.settled


def test_a_spool_that_cannot_be_written_counts_the_records_lost_loudly(tmp_path, caplog):
    folder = tmp_path / "state"
    folder.mkdir()
    d = Delivery(folder / "records.spool", hold=2)
    folder.rmdir()
    with caplog.at_level(logging.ERROR):
        for seq in range(3):
            d.add(record("cam0", seq))
    assert d.stats()["records_lost"] == 1 and "are LOST" in caplog.text


def test_what_a_core_could_not_deliver_is_sent_by_its_next_life(tmp_path):
    spool = tmp_path / "records.spool"
    d = Delivery(spool, hold=100)
    d.add(StreamStart("cam0", 0))
    d.add(record("cam0", 0))
    d.start_session()
    d.pump(Recorder().send)
    d.ack("cam0", 0, ended=False)  # the start and the record: acknowledged
    d.add(record("cam0", 1))
    d.add(EndOfStream("cam0", 1))
    d.close()
    again = Delivery(spool, hold=100)
    assert not again.settled
    again.start_session()
    rec = Recorder()
    again.pump(rec.send)
    assert rec.order() == [("metrics", "cam0", 1), ("eos", "cam0", 1)]
    again.ack("cam0", 1, ended=True)
    assert again.settled and not spool.exists()


@pytest.mark.parametrize(
    ("ack", "covers"),
    [
        ((4, False), {"start": False, "end-of-empty": False}),
        ((5, False), {"start": True, "end-of-empty": True}),
        ((4, True), {"start": True, "end-of-empty": True}),  # the end of an epoch that numbered nothing
        ((3, True), {"start": False, "end-of-empty": False}),
    ],
)
def test_what_an_ack_covers(tmp_path, ack, covers):
    """StreamStart(5) then EndOfStream(4): an epoch that numbered nothing (its last seq is the one before)."""
    d = Delivery(tmp_path / "records.spool", hold=100)
    d.add(StreamStart("cam0", 5))
    d.add(EndOfStream("cam0", 4))
    d.start_session()
    d.pump(Recorder().send)
    d.ack("cam0", *ack)
    assert d.stats()["records_held"] == 2 - sum(covers.values())


def test_consecutive_records_of_a_stream_go_as_one_records_and_an_ack_cutting_it_resends_only_the_rest(tmp_path):
    d = Delivery(tmp_path / "records.spool", hold=100)
    d.add(StreamStart("cam0", 0))
    for seq in range(5):
        d.add(record("cam0", seq))
    d.add(record("cam1", 0))
    d.add(EndOfStream("cam0", 4))
    d.start_session()
    rec = Recorder()
    assert d.pump(rec.send) == 8
    assert [(type(m).__name__, len(rows_of(m))) for m in rec.messages] == [
        ("StreamStart", 1), ("Records", 5), ("Records", 1), ("EndOfStream", 1)]  # fmt: skip
    d.ack("cam0", 2, ended=False)  # within the batch of five
    assert d.stats()["records_in_flight"] == 4  # cam0 3 and 4, cam1 0, the end
    d.end_session()  # the recorder restarted
    d.start_session()
    again = Recorder()
    d.pump(again.send)
    assert again.order() == [("metrics", "cam0", 3), ("metrics", "cam0", 4), ("metrics", "cam1", 0),
                            ("eos", "cam0", 4)]  # fmt: skip
    assert [len(rows_of(m)) for m in again.messages] == [2, 1, 1]  # regrouped: the rest of cam0's in one


def test_a_batch_is_regrouped_from_the_spool_too(tmp_path):
    d = Delivery(tmp_path / "records.spool", hold=100)
    for seq in range(6):
        d.add(record("cam0", seq))
    d.close()  # spooled for the next life
    d = Delivery(tmp_path / "records.spool", hold=100)
    d.ack("cam0", 1, ended=False)
    d.start_session()
    rec = Recorder()
    assert d.pump(rec.send) == 4
    assert [len(rows_of(m)) for m in rec.messages] == [4] and [k[2] for k in rec.order()] == [2, 3, 4, 5]
    d.ack("cam0", 5, ended=False)
    assert d.settled


def test_a_run_published_as_a_batch_goes_to_the_recorder_as_that_batch_and_regrouped_once_cut(tmp_path):
    d = Delivery(tmp_path / "records.spool", hold=100)
    d.start_session()
    run = [record("cam0", seq) for seq in range(5)]
    published = Records.of(run)
    d.add_run(run, published)
    rec = Recorder()
    assert d.pump(rec.send) == 5
    assert rec.messages == [published] and rec.messages[0] is published  # not packed again
    assert all(h.batch is None for h in d.memory)  # sent: its memory is let go
    # An ack cuts it: a new session gets the rest, packed anew, the same rows.
    d.ack("cam0", 1, ended=False)
    d.end_session()
    d.start_session()
    again = Recorder()
    assert d.pump(again.send) == 3
    (rest,) = again.messages
    assert rest is not published and [r.seq for r in rows_of(rest)] == [2, 3, 4]  # type: ignore[attr-defined]
    # Past the bound, the oldest of a batch go to the spool: they come back from it, the rest from
    # memory packed anew (no longer the whole batch), every record once and in order.
    small = Delivery(tmp_path / "small.spool", hold=4)
    small.start_session()
    big = [record("cam1", seq) for seq in range(10)]
    whole = Records.of(big)
    small.add_run(big, whole)
    spooled = Recorder()
    assert small.pump(spooled.send) == 10
    assert [m.seq for m in spooled.got] == list(range(10))  # type: ignore[attr-defined]
    assert all(m is not whole for m in spooled.messages)


def test_without_a_recorder_ready_a_published_batch_is_not_kept(tmp_path):
    """Held for a recorder that is not there, a batch would only take memory (the records themselves are
    kept): they are packed again when one comes."""
    d = Delivery(tmp_path / "records.spool", hold=100)
    run = [record("cam0", seq) for seq in range(3)]
    d.add_run(run, Records.of(run))
    assert [h.batch for h in d.memory] == [None, None, None]
    d.start_session()
    rec = Recorder()
    assert d.pump(rec.send) == 3 and [m.seq for m in rec.got] == [0, 1, 2]  # type: ignore[attr-defined]
