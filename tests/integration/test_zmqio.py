"""The socket helpers every service uses, on real ZeroMQ sockets."""

from __future__ import annotations

import time

import zmq

from encoders.shared import zmqio
from encoders.shared.messages import Credit


def pair():
    ctx = zmq.Context()
    pull = zmqio.open_socket(ctx, zmq.PULL, "tcp://127.0.0.1:0", bind=True, linger=0)
    push = zmqio.open_socket(ctx, zmq.PUSH, pull.getsockopt(zmq.LAST_ENDPOINT).decode(), bind=False, linger=0)
    return ctx, push, pull


def test_receive_waiting_takes_what_is_there_up_to_its_limit_and_counts_bad_messages():
    ctx, push, pull = pair()
    try:
        counters: dict = {}
        start = time.monotonic()
        assert list(zmqio.receive_waiting(pull, limit=10, counters=counters)) == []  # nothing waiting: no wait
        assert time.monotonic() - start < 0.5
        for n in range(3):
            zmqio.send(push, Credit("w", n))
        push.send_multipart([b"not msgpack \xc1"])
        for n in range(3, 6):
            zmqio.send(push, Credit("w", n))
        assert pull.poll(2000)
        time.sleep(0.2)  # all seven delivered
        first = list(zmqio.receive_waiting(pull, limit=4, counters=counters))
        assert [m.n for m in first] == [0, 1, 2]  # the fourth one taken was the bad one
        assert counters["bad_messages"] == 1
        rest = list(zmqio.receive_waiting(pull, limit=10, counters=counters))
        assert [m.n for m in rest] == [3, 4, 5]
        # With ``until``, every message waiting is taken, past the limit; it returns once none is left.
        for n in range(6, 11):
            zmqio.send(push, Credit("w", n))
        time.sleep(0.2)
        start = time.monotonic()
        assert [m.n for m in zmqio.receive_waiting(pull, limit=1, until=start + 5)] == [6, 7, 8, 9, 10]
        assert time.monotonic() - start < 1
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
