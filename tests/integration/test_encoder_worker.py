"""An encoder worker process (`python -m encoders encode`, the tiny real CLIP model) against a stand-in
core (tests/fake_core.py): its session, frames handed to it, its results."""

from __future__ import annotations

import io
import signal
import time

import numpy as np
import pytest
import zmq
from PIL import Image

from encoders.shared.messages import Bye, Embedding, Frame, Hello, Skipped, Stop

from ..fake_core import FakeCore


def jpeg(color, size=(80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def core(sockets):
    fake = FakeCore(sockets.bind(zmq.ROUTER), roles={"worker"})
    yield fake
    fake.close()


def start(service, core: FakeCore, tiny_model, *args: str, env: dict | None = None):
    return service("encode", "--core", core.endpoint, *args, env={**tiny_model, **(env or {})})


def hello_of(core: FakeCore) -> tuple[bytes, Hello]:
    """The worker's Hello (once its model has loaded), and its session's identity."""
    core.wait(Hello, timeout=60)
    (first,) = core.received(Hello)[:1]
    assert isinstance(first.msg, Hello)
    return first.identity, first.msg


def outcomes(core: FakeCore, n: int, timeout: float = 30) -> dict[int, Embedding | Skipped]:
    deadline = time.monotonic() + timeout
    while len(got := core.messages(Embedding) + core.messages(Skipped)) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} outcomes arrived"
        time.sleep(0.01)
    return {m.seq: m for m in got}


@pytest.mark.timeout(120)
def test_the_worker_says_hello_embeds_frames_with_thumbnails_and_skips_corrupt_ones(service, tiny_model, core):
    worker = start(service, core, tiny_model, "--batch-size", "4", "--worker-id", "wx", "--decode-threads", "2")
    identity, hello = hello_of(core)
    assert (hello.role, hello.name, hello.capacity) == ("worker", "wx", 8)  # one batch encoding, one gathering
    assert hello.model == "tiny-clip/tiny-clip.pt"
    good = jpeg("red", (640, 480))
    frames = [
        Frame("cam0", 0, 1.0, 640, 480, good),
        Frame("cam0", 1, 2.0, 640, 480, good[:200] + b"\0" * 300),
        Frame("cam0", 2, 3.0, 80, 60, jpeg("blue")),
    ]
    for f in frames:
        core.send(f, to=identity)
    got = outcomes(core, 3)
    assert isinstance(got[0], Embedding) and isinstance(got[2], Embedding)
    assert got[0].t_capture == 1.0 and got[0].worker == "wx" and got[0].model == "tiny-clip/tiny-clip.pt"
    assert got[0].vector.shape == (hello.dim,) == (64,) and np.linalg.norm(got[0].vector) == pytest.approx(1, abs=1e-5)
    assert Image.open(io.BytesIO(got[0].thumbnail)).size == (160, 120)  # the default thumbnail size
    assert Image.open(io.BytesIO(got[2].thumbnail)).size == (80, 60)  # never enlarged
    assert isinstance(got[1], Skipped) and "corrupt JPEG" in got[1].reason
    assert worker.stop() == 0
    core.wait(Bye)


@pytest.mark.timeout(120)
def test_sigterm_finishes_the_frames_the_worker_holds_then_bye(service, tiny_model, core):
    worker = start(service, core, tiny_model, "--batch-size", "16")
    identity, hello = hello_of(core)
    for seq in range(hello.capacity):
        core.send(Frame("cam0", seq, float(seq), 80, 60, jpeg((seq * 7 % 255, 0, 0))), to=identity)
    core.wait(Embedding)  # they have arrived
    worker.proc.send_signal(signal.SIGTERM)
    got = outcomes(core, hello.capacity)
    assert sorted(got) == list(range(hello.capacity))
    assert all(isinstance(m, Embedding) for m in got.values())
    assert worker.wait(30) == 0
    last = core.received()[-1]
    assert isinstance(last.msg, Bye) and last.identity == identity  # after every result


@pytest.mark.timeout(120)
def test_a_stop_from_the_core_finishes_the_frames_held_then_bye(service, tiny_model, core):
    worker = start(service, core, tiny_model, "--batch-size", "4")
    identity, _ = hello_of(core)
    for seq in range(8):
        core.send(Frame("cam0", seq, float(seq), 80, 60, jpeg("green")), to=identity)
    # The pictures come on the data socket, the Stop on the session: a core says Stop only once every frame
    # it assigned has its outcome, so here the pictures are held (the first outcome is out) before it.
    outcomes(core, 1)
    core.send(Stop("the pipeline is stopping"), to=identity)
    assert worker.wait(30) == 0
    assert sorted(outcomes(core, 8)) == list(range(8))
    (bye,) = core.messages(Bye)
    assert bye.reason == "the pipeline is stopping"


@pytest.mark.timeout(120)
def test_a_core_that_restarted_gets_a_new_hello_with_the_full_capacity(service, tiny_model, core):
    worker = start(service, core, tiny_model, "--batch-size", "2", env={"ENCODERS_HEARTBEAT_S": "0.2"})
    identity, _ = hello_of(core)
    core.restart()  # the worker's next heartbeat is answered "say Hello again"
    hellos = core.wait(Hello, 2, timeout=10)
    assert hellos[-1].capacity == 4 and core.received(Hello)[-1].identity == identity  # the same session
    core.send(Frame("cam0", 0, 0.0, 80, 60, jpeg("red")), to=identity)
    assert isinstance(outcomes(core, 1)[0], Embedding)
    assert worker.stop() == 0
    assert "does not know this session" in worker.output()


@pytest.mark.timeout(60)
def test_a_message_that_does_not_decode_is_counted_and_the_worker_goes_on(service, tiny_model, core):
    worker = start(service, core, tiny_model)
    identity, hello = hello_of(core)
    assert hello.capacity == 16  # the CPU's automatic batch of 8, twice
    core.send([b"\x93garbage"], to=identity)
    core.send([b"\x81\xa1v\x63"], to=identity)  # a map, wrong schema version
    core.send(Frame("cam0", 0, 0.0, 80, 60, jpeg("green")), to=identity)
    (msg,) = outcomes(core, 1).values()
    assert isinstance(msg, Embedding) and msg.seq == 0
    assert worker.stop() == 0
    out = worker.output()
    # Logged once, then counted: a peer sending garbage cannot flood the log.
    assert out.count("does not decode") == 1 and "bad messages 2" in out


@pytest.mark.timeout(180)
def test_a_workers_memory_stays_flat_over_a_long_run(service, tiny_model, core):
    """Thousands of frames through one worker: resident memory after warm-up does not keep growing."""
    import psutil

    worker = start(service, core, tiny_model, "--batch-size", "8")
    identity, hello = hello_of(core)
    frames = [jpeg((i * 40 % 255, 90, 200 - i * 30 % 200), (320, 240)) for i in range(6)]
    sent, rss = 0, {}
    started = time.monotonic()
    while (done := len(core.received(Embedding))) < 3000:
        assert time.monotonic() - started < 120, f"only {done} frames done, {sent} sent"
        while sent - done < hello.capacity:  # as the core hands them: never more than the capacity
            core.send(Frame("cam0", sent, float(sent), 320, 240, frames[sent % len(frames)]), to=identity)
            sent += 1
        for mark in (1000, 3000):
            if done >= mark and mark not in rss:
                rss[mark] = psutil.Process(worker.proc.pid).memory_info().rss
        time.sleep(0.002)
    rss.setdefault(3000, psutil.Process(worker.proc.pid).memory_info().rss)
    grown_mb = (rss[3000] - rss[1000]) / 2**20
    assert grown_mb < 20, f"worker grew by {grown_mb:.1f} MB between frames 1000 and 3000"
    assert all(len(m.thumbnail) > 0 for m in core.messages(Embedding)[-10:])
    assert worker.stop() == 0


@pytest.mark.timeout(60)
def test_an_address_that_does_not_parse_exits_2_with_one_line_naming_it(service, tiny_model):
    worker = service("encode", env={**tiny_model, "ENCODERS_CORE": "tcp://nonsense"})  # no port
    assert worker.wait(30) == 2
    output = worker.output()
    errors = [line for line in output.splitlines() if " ERROR " in line]  # the settings banner names it too
    assert len(errors) == 1 and "cannot connect tcp://nonsense" in errors[0], output
    assert "Traceback" not in output


@pytest.mark.timeout(60)
def test_a_core_that_refuses_the_worker_exits_2_saying_why(service, tiny_model, sockets):
    refusing = FakeCore(sockets.bind(zmq.ROUTER), refuse="protocol 1, but this core speaks protocol 2")
    try:
        worker = start(service, refusing, tiny_model)
        assert worker.wait(60) == 2
    finally:
        refusing.close()
    output = worker.output()
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "refused this worker: protocol 1, but this core speaks protocol 2" in errors[0]
    assert "Traceback" not in output
