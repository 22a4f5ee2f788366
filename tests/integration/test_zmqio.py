"""The socket helpers every service uses, on real ZeroMQ sockets."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import numpy as np
import pytest
import zmq

from encoders.shared import zmqio
from encoders.shared.messages import Credit, Message, MetricsRecord

from ..conftest import endpoint


@pytest.fixture
def pair(sockets) -> tuple[zmq.Socket, zmq.Socket]:
    """(PUSH, PULL) over inproc: a message sent is waiting at the PULL once send returns, so the
    tests know what is waiting there without waiting for a delivery."""
    pull = sockets.bind(zmq.PULL, f"inproc://pull-{uuid.uuid4().hex}")
    push = sockets.connect(zmq.PUSH, endpoint(pull))
    return push, pull


def test_receive_waiting_takes_what_is_there_up_to_its_limit_and_counts_bad_messages(pair):
    push, pull = pair
    counters: dict = {}
    start = time.monotonic()
    assert list(zmqio.receive_waiting(pull, limit=10, counters=counters)) == []  # nothing waiting: no wait
    assert time.monotonic() - start < 0.5
    for n in range(3):
        zmqio.send(push, Credit(n))
    push.send_multipart([b"not msgpack \xc1"])
    for n in range(3, 6):
        zmqio.send(push, Credit(n))
    first = credits(zmqio.receive_waiting(pull, limit=4, counters=counters))
    assert first == [0, 1, 2]  # the fourth one taken was the bad one
    assert counters["bad_messages"] == 1
    rest = credits(zmqio.receive_waiting(pull, limit=10, counters=counters))
    assert rest == [3, 4, 5]
    # With ``until``, every message waiting is taken, past the limit; it returns once none is left.
    for n in range(6, 11):
        zmqio.send(push, Credit(n))
    start = time.monotonic()
    assert credits(zmqio.receive_waiting(pull, limit=1, until=start + 5)) == [6, 7, 8, 9, 10]
    assert time.monotonic() - start < 1


def credits(messages: Iterable[Message]) -> list[int]:
    """The n of each Credit taken (each must be one)."""
    out = []
    for msg in messages:
        assert isinstance(msg, Credit), msg
        out.append(msg.n)
    return out


def test_a_message_received_as_bytes_is_the_one_received_without_a_copy(pair):
    """copy=True (records, embeddings) and copy=False (JPEG frames) decode to the same message."""
    push, pull = pair
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
        assert isinstance(msg, MetricsRecord), msg
        got.append(msg)
    for msg in got:
        assert (msg.stream, msg.seq, msg.similarity, msg.drift) == ("cam0", 7, 0.9, 0.1)
        assert np.array_equal(msg.vector, sent.vector) and msg.vector.dtype == np.float32


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_a_part_past_max_message_bytes_drops_the_connection_whatever_the_rest(sockets, curve):
    """zmq.MAXMSGSIZE bounds each part (issue #22), as it travels: CurveZMQ's bytes around it
    included, which open_socket allows for. A part of the largest legal size passes, with or
    without keys; one byte more and the peer is disconnected, the part never read."""
    from encoders.shared.keys import CurveKeys

    server_keys = client_keys = None
    if curve:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        server_keys = CurveKeys(server_public, server_secret, None)
        client_keys = CurveKeys(client_public, client_secret, server_public)
    largest = 100_000
    pull = sockets.bind(zmq.PULL, max_message_bytes=largest, curve=server_keys)
    push = sockets.connect(zmq.PUSH, endpoint(pull), curve=client_keys)
    push.send_multipart([b"h", b"x" * largest, b"y"])
    assert pull.poll(5000) and [len(p) for p in pull.recv_multipart()] == [1, largest, 1]
    push.send_multipart([b"h", b"x" * (largest + zmqio.CURVE_BYTES + 1)])
    assert not pull.poll(500), "a part past the bound was read"
