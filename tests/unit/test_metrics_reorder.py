"""Sequence order is restored, missing frames are given up after the wait, late ones counted."""

from encoders.services.metrics.reorder import LOST, StreamOrder


def test_releases_in_order_whatever_the_arrival_order():
    order = StreamOrder(max_wait=5)
    order.start(0)
    for seq in [2, 0, 3, 1]:
        order.add(seq, f"o{seq}", now=0)
    assert order.release(now=0) == [(0, "o0"), (1, "o1"), (2, "o2"), (3, "o3")]


def test_waits_for_a_gap_then_gives_it_up_as_lost():
    order = StreamOrder(max_wait=2)
    order.start(0)
    order.add(0, "a", now=0)
    order.add(2, "c", now=0)
    assert order.release(now=0) == [(0, "a")]
    assert order.release(now=1.9) == []  # still waiting for 1
    assert order.release(now=2.1) == [(1, LOST), (2, "c")]


def test_a_frame_arriving_after_it_was_given_up_is_late_and_not_released():
    order = StreamOrder(max_wait=1)
    order.start(0)
    order.add(1, "b", now=0)
    order.release(now=0)
    assert order.release(now=1.5) == [(0, LOST), (1, "b")]
    order.add(0, "a", now=2)
    assert order.release(now=2) == []
    assert order.late == 1


def test_duplicate_outcome_is_never_released_twice():
    order = StreamOrder(max_wait=1)
    order.start(0)
    order.add(0, "a", now=0)
    order.add(0, "a-again", now=0)
    assert order.release(now=0) == [(0, "a")]
    assert order.late == 1


def test_end_of_stream_waits_for_the_tail_then_finishes():
    order = StreamOrder(max_wait=1)
    order.start(0)
    order.add(0, "a", now=0)
    order.end(last_seq=2, now=0)
    assert order.release(now=0) == [(0, "a")]
    assert not order.finished()
    order.add(1, "b", now=0.5)
    assert order.release(now=0.5) == [(1, "b")]
    assert order.release(now=1.0) == []  # 2 may still come
    assert order.release(now=1.6) == [(2, LOST)]
    assert order.finished()


def test_empty_stream_finishes_at_once():
    order = StreamOrder(max_wait=1)
    order.start(0)
    order.end(last_seq=-1, now=0)
    assert order.release(now=0) == []
    assert order.finished()


def test_without_a_start_message_begins_at_the_lowest_seen_after_the_wait():
    order = StreamOrder(max_wait=1)
    order.add(11, "b", now=0)
    assert order.release(now=0.5) == []  # 10 may still arrive
    order.add(10, "a", now=0.6)
    assert order.release(now=1.1) == [(10, "a"), (11, "b")]


def test_start_drops_outcomes_before_the_declared_first_frame():
    order = StreamOrder(max_wait=1)
    order.add(3, "old", now=0)
    order.start(5)
    order.add(5, "x", now=0)
    assert order.release(now=0) == [(5, "x")]
    assert order.late == 1
