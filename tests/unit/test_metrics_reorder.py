"""Outcomes released in sequence order; gaps given up together once the oldest outcome behind them waited."""

import time

from encoders.services.metrics.reorder import LOST, Lost, StreamOrder, Unused


def test_releases_in_order_whatever_the_arrival_order():
    order = StreamOrder(0, max_wait=5)
    for seq in [2, 0, 3, 1]:
        order.add(seq, f"o{seq}", now=0)
    assert order.release(now=0) == [(0, "o0"), (1, "o1"), (2, "o2"), (3, "o3")]


def test_waits_for_a_gap_then_gives_it_up_as_lost():
    order = StreamOrder(0, max_wait=2)
    order.add(0, "a", now=0)
    order.add(2, "c", now=0)
    assert order.release(now=0) == [(0, "a")]
    assert order.release(now=1.9) == []  # still waiting for 1
    assert order.release(now=2.1) == [(1, LOST), (2, "c")]


def test_every_overdue_gap_goes_at_once():
    """A vanished worker held every other frame: the stream once stalled a whole max_wait per gap."""
    order = StreamOrder(0, max_wait=10)
    for seq in range(1, 40, 2):  # 1, 3, 5 ... arrived; 0, 2, 4 ... were in the vanished worker's hands
        order.add(seq, f"o{seq}", now=seq / 100)
    assert order.release(now=9.9) == []
    out = order.release(now=10.4)  # the oldest behind every gap has waited 10 s: every gap goes
    assert out[0] == (0, LOST) and out[1] == (1, "o1") and out[-1] == (39, "o39")
    assert order.next_seq == 40 and not order.pending


def test_a_gap_waits_for_the_oldest_outcome_behind_it_not_the_first_gap():
    order = StreamOrder(0, max_wait=10)
    order.add(1, "b", now=0)
    order.add(3, "d", now=8)  # behind the gap at 2 only outcomes that arrived at 8
    out = order.release(now=10)
    assert out == [(0, LOST), (1, "b")]  # the gap at 2 has waited behind "d" for 2 s only
    assert order.release(now=17.9) == []
    assert order.release(now=18) == [(2, LOST), (3, "d")]


def test_lost_handed_in_goes_without_waiting():
    order = StreamOrder(0, max_wait=10)
    order.add(1, "b", now=0)
    order.add(0, LOST, now=0.1)  # its worker is known to be gone
    assert order.release(now=0.1) == [(0, LOST), (1, "b")]


def test_a_frame_arriving_after_it_was_given_up_is_late_and_not_released():
    order = StreamOrder(0, max_wait=1)
    order.add(1, "b", now=0)
    assert order.release(now=1.5) == [(0, LOST), (1, "b")]
    assert not order.add(0, "a", now=2)
    assert order.release(now=2) == []
    assert order.late == 1


def test_duplicate_outcome_is_never_released_twice():
    order = StreamOrder(0, max_wait=1)
    order.add(0, "a", now=0)
    assert not order.add(0, "a-again", now=0)
    assert order.release(now=0) == [(0, "a")]
    assert order.late == 1


def test_a_tail_gap_is_not_given_up_by_time():
    """Frames still in a worker's hands (or waiting for one) are the core's to close."""
    order = StreamOrder(5, max_wait=1)
    order.add(5, "a", now=0)
    assert order.release(now=100) == [(5, "a")]
    assert order.release(now=1000) == [] and order.next_seq == 6


def test_past_max_pending_the_oldest_gaps_go_counted():
    order = StreamOrder(0, max_wait=100, max_pending=3)
    for seq in (2, 4, 6):
        order.add(seq, seq, now=0)
    assert order.release(now=0) == []
    order.add(8, 8, now=0)  # four waiting: the first gap goes
    assert order.release(now=0) == [(0, Lost(2)), (2, 2)]
    assert order.forced == 2 and order.waiting() == 3


def test_unused_numbers_are_released_silently_and_are_nothing_to_wait_behind():
    order = StreamOrder(0, max_wait=1)
    order.add(1, Unused(99), now=0)  # numbers 1..99 were never handed out (a floor raised)
    assert order.release(now=50) == []  # 0 is still out: nothing real waits behind it
    order.add(0, "a", now=50)
    order.add(100, "z", now=50)
    assert order.release(now=50) == [(0, "a"), (1, Unused(99)), (100, "z")]


def test_a_huge_gap_is_one_run():
    order = StreamOrder(0, max_wait=1)
    order.add(10**18, "x", now=0)
    started = time.monotonic()
    assert order.release(now=2) == [(0, Lost(10**18)), (10**18, "x")]
    assert time.monotonic() - started < 1


def test_what_is_released_leaves_no_trace_however_long_the_stream():
    """In order, each outcome left an entry in the heap of seqs and one in the arrivals for ever
    (about 100 bytes a frame for the core's life); out of order, as many as were ever released."""
    in_order = StreamOrder(0, max_wait=5.0)
    for seq in range(50_000):
        in_order.add(seq, "embedded", 0.0)
        assert in_order.release(0.0) == [(seq, "embedded")]
    assert (len(in_order._seqs), len(in_order._arrivals), len(in_order.pending)) == (0, 0, 0)
    # Out of order, outcomes always waiting behind a gap: the even seqs come 6 steps late.
    lagging = StreamOrder(0, max_wait=5.0)
    released = 0
    for step in range(50_000):
        if step % 2:
            lagging.add(step, "embedded", 0.0)
        if step >= 6 and step % 2 == 0:
            lagging.add(step - 6, "embedded", 0.0)
        released += len(lagging.release(0.0))
        assert len(lagging._seqs) <= 10 and len(lagging._arrivals) <= 10, step
    assert released >= 50_000 - 8 and lagging.pending
