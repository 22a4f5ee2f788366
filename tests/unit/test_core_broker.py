"""The core's dispatch (broker.py): capacity, turns across streams, the newest frame, lossless credit bounds."""

from __future__ import annotations

from collections import Counter

from encoders.services.metrics.broker import LOSSLESS_MAX, LOSSLESS_MIN, START_WINDOW, Broker
from encoders.shared.messages import Frame


def frame(stream: str, seq: int) -> Frame:
    return Frame(stream, seq, float(seq), 2, 2, b"jpeg")


def held(b: Broker, identity: bytes) -> set[tuple[str, int]]:
    return set(b.workers[identity].held)


def test_a_worker_never_holds_more_than_its_capacity():
    b = Broker(hold_timeout=10)
    b.add_worker(b"w", "w", capacity=2)
    for seq in range(5):
        b.offer(frame("cam0", seq), lossless=True)
    assert [f.seq for _, f in b.assign(now=0)] == [0, 1]
    assert b.assign(now=0) == [] and b.in_use == 2 and b.queued("cam0") == 3
    assert b.result(b"w", "cam0", 0)
    assert [(w, f.seq) for w, f in b.assign(now=0)] == [(b"w", 2)]  # freed capacity lets the next one out


def test_a_worker_is_trusted_with_more_frames_as_it_returns_results():
    """Issue #13: a worker claiming a huge capacity and answering nothing took most frames. Room
    starts at START_WINDOW and grows by one per result; frames given up shrink it again."""
    b = Broker(hold_timeout=10)
    b.add_worker(b"greedy", "greedy", capacity=4096)
    b.add_worker(b"honest", "honest", capacity=16)
    for seq in range(200):
        b.offer(frame("cam0", seq), lossless=True)
    for t in range(50):  # the honest worker answers everything it holds; the greedy one nothing
        b.assign(now=t * 0.1)
        for stream, seq in list(held(b, b"honest")):
            assert b.result(b"honest", stream, seq)
    assert len(held(b, b"greedy")) == START_WINDOW
    assert b.workers[b"honest"].window == 16  # at its full capacity after a few rounds
    assert b.handed - START_WINDOW > 150  # nearly every frame went to the worker that answers
    given_up = b.overdue(now=20.0)
    assert len(given_up) == START_WINDOW and b.workers[b"greedy"].window == START_WINDOW


def test_equal_workers_share_a_light_load_whatever_windows_they_earned():
    b = Broker(hold_timeout=10)
    b.add_worker(b"old", "old", capacity=16)
    b.workers[b"old"].window = 16  # it has returned many results already
    b.add_worker(b"new", "new", capacity=16)  # just joined: window START_WINDOW
    given = []
    for seq in range(10):  # one frame at a time, answered at once
        b.offer(frame("cam0", seq), lossless=True)
        ((identity, f),) = b.assign(now=seq)
        given.append(identity)
        assert b.result(identity, "cam0", f.seq)
    assert given.count(b"old") == given.count(b"new") == 5


def test_real_time_keeps_only_the_newest_frame_waiting():
    b = Broker(hold_timeout=10)
    assert b.offer(frame("cam0", 0), lossless=False) is None
    displaced = b.offer(frame("cam0", 1), lossless=False)
    assert displaced is not None and displaced.seq == 0
    assert b.offer(frame("cam0", 2), lossless=False).seq == 1  # type: ignore[union-attr]
    b.add_worker(b"w", "w", capacity=4)
    assert [f.seq for _, f in b.assign(now=0)] == [2]


def test_streams_are_served_in_turn_whatever_each_sends():
    b = Broker(hold_timeout=10)
    b.add_worker(b"w", "w", capacity=1)
    for seq in range(10):  # cam0 queues ten (lossless), the others one each
        b.offer(frame("cam0", seq), lossless=True)
    b.offer(frame("cam1", 0), lossless=True)
    b.offer(frame("cam2", 0), lossless=True)
    served = []
    for _ in range(6):
        ((_, f),) = b.assign(now=0)
        served.append((f.stream, f.seq))
        b.result(b"w", f.stream, f.seq)
    assert served == [("cam0", 0), ("cam1", 0), ("cam2", 0), ("cam0", 1), ("cam0", 2), ("cam0", 3)]


def test_a_frame_goes_to_the_worker_with_the_most_room():
    b = Broker(hold_timeout=10)
    b.add_worker(b"small", "small", capacity=1)
    b.add_worker(b"big", "big", capacity=3)
    for seq in range(4):
        b.offer(frame("cam0", seq), lossless=True)
    out = [(w, f.seq) for w, f in b.assign(now=0)]
    assert out[0] == (b"big", 0)  # 3 free against 1
    assert Counter(w for w, _ in out) == {b"big": 3, b"small": 1}


def test_saturated_workers_share_evenly_across_many_cameras():
    """Eight real-time cameras, two saturated workers: each camera gets its share, and a frame waits
    at most one round of the streams (the lead's latency test, without sockets)."""
    b = Broker(hold_timeout=10)
    b.add_worker(b"w1", "w1", capacity=4)
    b.add_worker(b"w2", "w2", capacity=4)
    embedded: Counter[str] = Counter()
    next_seq = 0
    in_hand: list[tuple[bytes, Frame]] = []
    waits = []
    for tick in range(400):  # every tick each camera captures; the workers finish 2 frames
        for cam in range(8):
            b.offer(Frame(f"cam{cam}", next_seq, float(tick), 2, 2), lossless=False)
            next_seq += 1
        for worker, f in in_hand[:2]:
            assert b.result(worker, f.stream, f.seq)
            embedded[f.stream] += 1
            waits.append(tick - f.t_capture)
        in_hand = in_hand[2:]
        in_hand += b.assign(now=tick)
        assert all(len(w.held) <= w.capacity for w in b.workers.values())
    mean = sum(embedded.values()) / 8
    assert max(waits) <= 5  # ticks from capture to result: the frames a worker holds, plus one
    assert all(abs(n - mean) <= 0.2 * mean for n in embedded.values()), embedded


def test_a_result_is_taken_only_from_the_worker_holding_the_frame():
    b = Broker(hold_timeout=10)
    b.add_worker(b"a", "a", capacity=1)
    b.add_worker(b"b", "b", capacity=1)
    b.offer(frame("cam0", 7), lossless=False)
    ((holder, _),) = b.assign(now=0)
    other = b"b" if holder == b"a" else b"a"
    assert not b.result(other, "cam0", 7)
    assert not b.result(holder, "cam0", 8)
    assert b.result(holder, "cam0", 7)
    assert not b.result(holder, "cam0", 7)  # once


def test_a_worker_that_goes_returns_what_it_held_and_a_new_life_starts_empty():
    b = Broker(hold_timeout=10)
    b.add_worker(b"w", "w", capacity=3)
    for seq in range(3):
        b.offer(frame("cam0", seq), lossless=True)
    b.assign(now=0)
    assert sorted(b.add_worker(b"w", "w", capacity=3)) == [("cam0", 0), ("cam0", 1), ("cam0", 2)]
    assert b.capacity == 3 and b.in_use == 0  # never counted twice
    assert b.remove_worker(b"w") == [] and b.capacity == 0


def test_frames_held_too_long_are_given_up_and_their_capacity_comes_back():
    b = Broker(hold_timeout=5)
    b.add_worker(b"w", "w", capacity=1)
    b.offer(frame("cam0", 0), lossless=False)
    b.assign(now=0)
    assert b.overdue(now=5) == []
    assert b.overdue(now=5.1) == [(b"w", ("cam0", 0))]
    assert b.in_use == 0 and not b.result(b"w", "cam0", 0)


def test_a_failed_send_puts_the_frame_back_first_and_pauses_the_worker():
    b = Broker(hold_timeout=5)
    b.add_worker(b"w", "w", capacity=2)
    b.offer(frame("cam0", 0), lossless=True)
    b.offer(frame("cam1", 0), lossless=True)
    ((_, f), _) = b.assign(now=0)
    b.result(b"w", "cam1", 0)
    b.undo(b"w", f)
    assert b.in_use == 0 and b.queued("cam0") == 1
    assert b.assign(now=0) == []  # paused until heard from
    b.heard(b"w")
    assert [(x.stream, x.seq) for _, x in b.assign(now=0)] == [("cam0", 0)]


def test_a_lossless_stream_may_queue_the_workers_capacity_within_bounds():
    b = Broker(hold_timeout=5)
    assert b.lossless_limit() == LOSSLESS_MIN  # no worker: a few frames, then the camera waits
    b.add_worker(b"w", "w", capacity=16)
    assert b.lossless_limit() == 16
    b.add_worker(b"x", "x", capacity=4096)
    assert b.lossless_limit() == LOSSLESS_MAX


def test_a_drain_can_take_every_frame_waiting_or_held():
    b = Broker(hold_timeout=5)
    b.add_worker(b"w", "w", capacity=1)
    for cam in ("cam0", "cam1"):
        b.offer(frame(cam, 0), lossless=False)
    b.assign(now=0)
    assert [f.stream for f in b.drop_waiting()] == ["cam1"]
    assert b.give_up_held() == [("cam0", 0)] and b.in_use == 0 and b.frames_waiting == 0


def test_a_stream_no_worker_with_room_may_take_waits_in_its_place_and_the_others_go_on():
    """With keys a worker takes a stream's frames only once it admits that ingest's key (links.py):
    the stream's frame waits, keeps its place in line, and other streams are not held up."""
    b = Broker(hold_timeout=10)
    b.add_worker(b"w", "w", capacity=4)
    admitted = {"cam0"}
    may = lambda worker, stream: stream in admitted  # noqa: E731
    b.offer(frame("cam1", 0), lossless=False)
    b.offer(frame("cam0", 0), lossless=False)
    assert [(f.stream, f.seq) for _, f in b.assign(0, may)] == [("cam0", 0)]
    assert b.queued("cam1") == 1 and list(b.turn) == ["cam1"]
    displaced = b.offer(frame("cam1", 1), lossless=False)
    assert displaced is not None and displaced.seq == 0  # real time: the newest waits, as ever
    b.offer(frame("cam0", 1), lossless=False)
    admitted.add("cam1")
    assert [(f.stream, f.seq) for _, f in b.assign(0, may)] == [("cam1", 1), ("cam0", 1)]  # its place kept
    assert b.assign(0, may) == [] and b.in_use == 3
