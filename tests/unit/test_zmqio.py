"""shared/zmqio.py's small helpers that no socket test covers by itself."""

from __future__ import annotations

import pytest
import zmq

from encoders.shared.zmqio import poll_ms, recv_parts


def test_a_wait_until_a_deadline_is_rounded_up_to_whole_milliseconds():
    # Rounded down, 0.4 ms left would be a poll of 0 ms: a loop that spins until its deadline.
    assert [poll_ms(s) for s in (0.0004, 0.001, 0.0021, 0.5)] == [1, 1, 3, 500]
    assert poll_ms(0.0) == 0 and poll_ms(-0.003) == 0  # due, or past it: no wait


def test_recv_parts_takes_every_part_of_one_message_and_no_more(sockets):
    a = sockets.bind(zmq.PAIR, "inproc://parts")
    b = sockets.connect(zmq.PAIR, "inproc://parts")
    messages = [[b"one"], [b"kind", b"", b"x" * 100_000], [b"next", b"message"]]
    for parts in messages * 2:
        a.send_multipart(parts)
    got = [recv_parts(b) for _ in messages]  # Frames, their ``more`` read
    got += [recv_parts(b, copy=True) for _ in messages]  # bytes, as recv_multipart's
    assert [[bytes(p) for p in parts] for parts in got] == messages * 2
    with pytest.raises(zmq.Again):
        recv_parts(b, zmq.NOBLOCK)
