"""The socket helpers every service uses, on real ZeroMQ sockets."""

from __future__ import annotations

import time

import numpy as np
import zmq

from encoders.shared import zmqio
from encoders.shared.messages import Credit, MetricsRecord


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


def test_a_message_received_as_bytes_is_the_one_received_without_a_copy():
    """copy=True (records, embeddings) and copy=False (JPEG frames) decode to the same message."""
    ctx, push, pull = pair()
    try:
        sent = MetricsRecord(
            stream="cam0",
            seq=7,
            t_capture=1.5,
            t_encoded=2.0,
            worker="w",
            model="m",
            similarity=0.9,
            drift=0.1,
            vector=np.arange(512, dtype=np.float32),
        )
        got = []
        for copy in (True, False):
            zmqio.send(push, sent)
            assert pull.poll(2000)
            msg, _ = zmqio.receive(pull, copy=copy)
            got.append(msg)
        for msg in got:
            assert (msg.stream, msg.seq, msg.similarity, msg.drift) == ("cam0", 7, 0.9, 0.1)
            assert np.array_equal(msg.vector, sent.vector) and msg.vector.dtype == np.float32
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
