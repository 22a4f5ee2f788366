"""An encoder worker process against a test ingest (ROUTER) and a test metrics (PULL)."""

from __future__ import annotations

import io
import signal
import time

import numpy as np
import pytest
import zmq
from PIL import Image

from encoders.shared import zmqio
from encoders.shared.messages import Credit, Embedding, Frame, Skipped

from ..conftest import endpoint


def jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def fake_ingest_and_metrics(sockets):
    """The ROUTER an ingest binds and the PULL metrics binds."""
    return sockets.bind(zmq.ROUTER), sockets.bind(zmq.PULL)


def next_credit(router, timeout_s=60) -> tuple[bytes, Credit]:
    assert router.poll(timeout_s * 1000), "no credit from the worker"
    msg, identity = zmqio.receive(router, routed=True)
    assert isinstance(msg, Credit) and identity is not None
    return identity, msg


def outcomes(pull, n, timeout_s=30):
    got: list = []
    while len(got) < n:
        assert pull.poll(timeout_s * 1000), f"only {len(got)} of {n} outcomes arrived"
        got.append(zmqio.receive(pull)[0])
    return got


@pytest.mark.timeout(120)
def test_worker_asks_for_frames_embeds_them_skips_corrupt_ones_and_gives_credit_back(
    service, tiny_model, fake_ingest_and_metrics
):
    router, pull = fake_ingest_and_metrics
    worker = service(
        "encode",
        "--work",
        endpoint(router),
        "--metrics-in",
        endpoint(pull),
        "--batch-size",
        "4",
        "--worker-id",
        "wx",
        "--decode-threads",
        "2",
        env=tiny_model,
    )
    identity, credit = next_credit(router)
    assert credit.worker == "wx" and credit.n == 8  # one batch encoding, one gathering
    good = jpeg("red")
    frames = [
        Frame("cam0", 0, 1.0, 80, 60, good),
        Frame("cam0", 1, 2.0, 80, 60, good[:200] + b"\0" * 300),
        Frame("cam0", 2, 3.0, 80, 60, jpeg("blue")),
    ]
    for f in frames:
        zmqio.send(router, f, prefix=[identity])
    got = {m.seq: m for m in outcomes(pull, 3)}
    assert isinstance(got[0], Embedding) and isinstance(got[2], Embedding)
    assert got[0].t_capture == 1.0 and got[0].worker == "wx" and got[0].model == "tiny-clip/tiny-clip.pt"
    assert got[0].vector.shape == (64,) and np.linalg.norm(got[0].vector) == pytest.approx(1, abs=1e-5)
    assert isinstance(got[1], Skipped) and "corrupt JPEG" in got[1].reason
    # Each finished frame is credited back: 3 in all, whatever the grouping.
    returned = 0
    while returned < 3:
        returned += next_credit(router, 10)[1].n
    assert returned == 3
    assert worker.stop() == 0


@pytest.mark.timeout(120)
def test_sigterm_finishes_the_frames_the_worker_holds(service, tiny_model, fake_ingest_and_metrics):
    router, pull = fake_ingest_and_metrics
    worker = service(
        "encode", "--work", endpoint(router), "--metrics-in", endpoint(pull), "--batch-size", "16", env=tiny_model
    )
    identity, credit = next_credit(router)
    for seq in range(credit.n):
        zmqio.send(router, Frame("cam0", seq, float(seq), 80, 60, jpeg((seq * 7 % 255, 0, 0))), prefix=[identity])
    worker.proc.send_signal(signal.SIGTERM)
    got = outcomes(pull, credit.n)
    assert sorted(m.seq for m in got) == list(range(credit.n))
    assert all(isinstance(m, Embedding) for m in got)
    assert worker.wait(30) == 0


@pytest.mark.timeout(60)
def test_a_message_that_does_not_decode_is_counted_and_the_worker_goes_on(service, tiny_model, fake_ingest_and_metrics):
    router, pull = fake_ingest_and_metrics
    worker = service("encode", "--work", endpoint(router), "--metrics-in", endpoint(pull), env=tiny_model)
    identity, credit = next_credit(router)
    assert credit.n == 16  # the CPU's automatic batch of 8, twice
    router.send_multipart([identity, b"\x93garbage"])
    router.send_multipart([identity, b"\x81\xa1v\x63"])  # a map, wrong schema version
    zmqio.send(router, Frame("cam0", 0, 0.0, 80, 60, jpeg("green")), prefix=[identity])
    (msg,) = outcomes(pull, 1)
    assert isinstance(msg, Embedding) and msg.seq == 0
    assert worker.stop() == 0
    assert worker.output().count("does not decode") == 2


@pytest.mark.timeout(180)
def test_a_workers_memory_stays_flat_over_a_long_run(service, tiny_model, fake_ingest_and_metrics):
    """Thousands of frames through one worker: resident memory after warm-up does not keep growing."""
    import psutil

    router, pull = fake_ingest_and_metrics
    worker = service(
        "encode", "--work", endpoint(router), "--metrics-in", endpoint(pull), "--batch-size", "8", env=tiny_model
    )
    frames = [jpeg((i * 40 % 255, 90, 200 - i * 30 % 200)) for i in range(6)]
    identity, credit = next_credit(router)
    owed, sent, done, rss = credit.n, 0, 0, {}
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(pull, zmq.POLLIN)
    started = time.monotonic()
    while done < 3000:
        assert time.monotonic() - started < 120, f"only {done} frames done, {sent} sent, {owed} owed"
        for _ in range(owed):
            zmqio.send(router, Frame("cam0", sent, float(sent), 80, 60, frames[sent % len(frames)]), prefix=[identity])
            sent += 1
        owed = 0
        ready = dict(poller.poll(1000))
        while router in ready and router.poll(0):
            owed += next_credit(router, 0)[1].n
        while pull in ready and pull.poll(0):
            zmqio.receive(pull)
            done += 1
            if done in (1000, 3000):
                rss[done] = psutil.Process(worker.proc.pid).memory_info().rss
    grown_mb = (rss[3000] - rss[1000]) / 2**20
    assert grown_mb < 20, f"worker grew by {grown_mb:.1f} MB between frames 1000 and 3000"
    assert worker.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "variable, endpoint",
    [
        ("ENCODERS_WORK", "tcp://nonsense"),  # no port: ZeroMQ refuses it at connect
        ("ENCODERS_WORK", "tcp://127.0.0.1:5555,nonsense://x"),  # the second ingest's
        ("ENCODERS_METRICS_IN", "tcp://:::"),  # opened after the ingests' sockets and their monitors
    ],
)
def test_an_endpoint_that_does_not_parse_exits_2_with_one_line_naming_it(service, tiny_model, variable, endpoint):
    bad = endpoint.split(",")[-1]
    worker = service("encode", env={**tiny_model, variable: endpoint})
    assert worker.wait(30) == 2
    output = worker.output()
    errors = [line for line in output.splitlines() if " ERROR " in line]  # the settings banner names it too
    assert len(errors) == 1 and f"cannot connect {bad}" in errors[0], output
    assert "Traceback" not in output
