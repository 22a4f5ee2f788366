"""The encoder's Worker on sockets it is given: credit per source, re-granted on reconnect, none while draining."""

from __future__ import annotations

import io
import time

import pytest
import zmq
from PIL import Image

from encoders.services.encoder.model import load_encoder
from encoders.services.encoder.worker import Worker, WorkerSockets
from encoders.shared import zmqio
from encoders.shared.messages import Credit, Embedding, Frame

from ..conftest import Sockets, endpoint


def jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def encoder(tiny_model):
    return load_encoder(tiny_model["ENCODERS_MODEL"], tiny_model["ENCODERS_PRETRAINED"], "cpu")


def bound(sockets: Sockets, kind: int) -> tuple[zmq.Socket, str]:
    sock = sockets.bind(kind)
    return sock, endpoint(sock)


def credit(router, timeout_ms=5000) -> tuple[bytes, int]:
    assert router.poll(timeout_ms), "no credit came"
    msg, identity = zmqio.receive(router, routed=True)
    assert isinstance(msg, Credit) and msg.worker == "w"
    assert identity is not None
    return identity, msg.n


def receive_until(worker, condition, timeout_s=10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        worker.receive(50)


def test_each_ingest_gets_its_own_credit_and_a_restarted_one_gets_what_is_free_again(sockets, encoder):
    first, first_addr = bound(sockets, zmq.ROUTER)
    second, second_addr = bound(sockets, zmq.ROUTER)
    worker_sockets = WorkerSockets.open(sockets.ctx, [first_addr, second_addr], "inproc://metrics", "w")
    worker = Worker("w", encoder, worker_sockets, batch_size=2, batch_wait_ms=0, decode_threads=1)
    try:
        worker.grant_full_credit()
        identity, n = credit(first)
        assert n == 4 and credit(second)[1] == 4
        for seq in range(3):
            zmqio.send(first, Frame("cam0", seq, 0.0, 80, 60, jpeg("red")), prefix=[identity])
        receive_until(worker, lambda: len(worker.intake) == 3)

        first.close(0)  # ingest restarts on the same endpoint
        receive_until(worker, lambda: worker.lost_connection[0])
        restarted = sockets.bind(zmq.ROUTER, first_addr)
        receive_until(worker, lambda: not worker.lost_connection[0])
        assert credit(restarted)[1] == 1  # it knows nothing of the 4 granted before; 3 are still held
        assert not second.poll(200)  # the other ingest's credit stands
    finally:
        worker.close()


def test_while_draining_frames_held_are_encoded_and_no_credit_is_given(sockets, encoder):
    router, addr = bound(sockets, zmq.ROUTER)
    pull, metrics_addr = bound(sockets, zmq.PULL)
    worker_sockets = WorkerSockets.open(sockets.ctx, [addr], metrics_addr, "w")
    worker = Worker("w", encoder, worker_sockets, batch_size=2, batch_wait_ms=0, decode_threads=2)
    try:
        worker.grant_full_credit()
        identity, n = credit(router)
        for seq in range(n):
            zmqio.send(router, Frame("cam0", seq, float(seq), 80, 60, jpeg("blue")), prefix=[identity])
        receive_until(worker, lambda: len(worker.intake) == n)
        worker.drain(limit_s=30)
        got = [zmqio.receive(pull)[0] for _ in range(n) if pull.poll(5000)]
        assert sorted(m.seq for m in got if isinstance(m, Embedding)) == list(range(n))
        assert worker.counters["embedded"] == n and not worker.model.busy
        assert not router.poll(200)  # what ingest already sent is all that comes
    finally:
        worker.close()
