"""The ingest's loop (stream.py) against a stand-in core: a ROUTER the test holds, over inproc, and a
stand-in camera behind the real reader thread. The test drives the loop one step at a time."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encoders.services.ingest import stream as stream_module
from encoders.services.ingest.config import IngestConfig
from encoders.services.ingest.http_source import JpegFrame
from encoders.services.ingest.reader import CameraReader
from encoders.services.ingest.stream import Ingest
from encoders.shared import zmqio
from encoders.shared.messages import (
    Bye,
    Capture,
    CaptureEnded,
    Credit,
    Heartbeat,
    Hello,
    Message,
    Refused,
    Stats,
    Stop,
    Welcome,
)

from .message_strategies import any_message
from .test_ingest_reader import JPEG, FakeCamera

CORE = "inproc://core"
URL = "http://pi:secret@camera:8000/stream.mjpg"


class Core:
    """The test's stand-in for the core's ROUTER: what the ingest sent, heartbeats left out."""

    def __init__(self, sockets) -> None:
        self.sock = sockets.bind(zmq.ROUTER, CORE)
        self.identity = b""
        self.got: list[Message] = []

    def collect(self) -> None:
        while self.sock.poll(0):
            msg, identity = zmqio.receive(self.sock, routed=True)
            assert msg is not None and identity is not None
            self.identity = identity
            if not isinstance(msg, Heartbeat):
                self.got.append(msg)

    def of(self, kind: type) -> list:
        self.collect()
        return [m for m in self.got if isinstance(m, kind)]

    def send(self, msg: Message) -> None:
        zmqio.send(self.sock, msg, prefix=[self.identity])

    def welcome(self, credit: int = 0) -> None:
        self.send(Welcome("core-1", 5.0, 3, credit=credit))


@pytest.fixture
def core(sockets):
    return Core(sockets)


@pytest.fixture
def make(sockets):
    """make(camera, **settings) -> an Ingest whose session has said Hello, with the reader it was given."""
    made: list[tuple[Ingest, CameraReader]] = []

    def start(camera: FakeCamera, **settings) -> Ingest:
        cfg = IngestConfig(**{"stream": URL, "stream_id": "cam0", "core": CORE, "heartbeat_s": 5.0, **settings})
        reader = CameraReader(sockets.ctx, camera, threading.Event())
        ingest = Ingest(cfg, sockets.ctx, reader, camera=counters())
        sockets.adopt(ingest.session.sock)
        made.append((ingest, reader))
        ingest.start()
        return ingest

    yield start
    for ingest, reader in made:
        reader.interrupt()
        reader.close()
        ingest.close()


def counters() -> dict:
    return {"corrupt": 2, "reconnects": 1, "truncated": 0, "bytes": 1234, "connects": 2}


def paced(every_s: float) -> Iterator[int]:
    """A camera's frames, one every ``every_s`` seconds, for ever."""
    for i in itertools.count():
        time.sleep(every_s)
        yield i


def drive(ingest: Ingest, until: Callable[[], object], timeout: float = 5.0) -> str | None:
    """Step the ingest until ``until()`` is true (None) or a step ends the stream (its outcome)."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        outcome = ingest.step(10)
        if outcome is not None:
            return outcome
    return None


def drive_for(ingest: Ingest, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert ingest.step(10) is None


def test_hello_then_every_frame_goes_to_the_core_as_a_capture_then_its_end(core, make):
    ingest = make(FakeCamera(range(5)))
    (hello,) = wait_for_kind(core, Hello)
    assert (hello.role, hello.stream, hello.lossless, hello.undelivered) == ("ingest", "cam0", False, 0)
    assert hello.url == "http://pi:***@camera:8000/stream.mjpg"  # no password travels
    drive_for(ingest, 0.1)
    assert not ingest.reader_started and not core.of(Capture)  # the camera waits for the core's answer
    core.welcome()
    assert drive(ingest, lambda: False) == "ended"
    captures = core.of(Capture)
    assert [c.t_capture for c in captures] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(c.jpeg == JPEG and (c.width, c.height) == (640, 480) for c in captures)
    ingest.finish("ended")
    stats, ended, bye = wait_for_kind(core, Stats, CaptureEnded, Bye)
    assert ended.reason == "the camera's stream ended (the server ended the stream)"
    assert ended.counts == {"corrupt": 2, "reconnects": 1, "truncated": 0}
    assert (stats.service, stats.stream) == ("ingest", "cam0")
    c = stats.counters
    assert (c["read"], c["published"], c["undelivered"], c["corrupt"], c["reconnects"], c["bytes"]) == (
        5,
        5,
        0,
        2,
        1,
        1234,
    )
    assert core.got[-3:] == [stats, ended, bye]  # the final Stats, the end, then Bye: nothing after


def wait_for_kind(core: Core, *kinds: type) -> list:
    """The latest message of each of these kinds, once each has come (within a few seconds)."""
    deadline = time.monotonic() + 5
    while not all(core.of(kind) for kind in kinds):
        assert time.monotonic() < deadline, f"not all of {[k.__name__ for k in kinds]} came"
        core.sock.poll(20)
    return [core.of(kind)[-1] for kind in kinds]


def test_stats_go_to_the_core_every_second_while_joined(core, make, monkeypatch):
    monkeypatch.setattr(stream_module, "STATS_EVERY", 0.05)
    ingest = make(FakeCamera(paced(0.01)))
    wait_for_kind(core, Hello)
    drive_for(ingest, 0.2)
    assert not core.of(Stats)  # not joined: the core would not know whose they are
    core.welcome()
    drive(ingest, lambda: len(core.of(Stats)) >= 3)
    last = core.of(Stats)[-1].counters
    assert last["published"] > 0 and last["fps"] > 0 and last["joined"] == 1 and last["undelivered"] == 0


def test_frames_read_while_the_core_is_away_are_counted_and_told_in_the_next_hello(core, make, caplog):
    ingest = make(FakeCamera(paced(0.01)), heartbeat_s=0.1, heartbeat_misses=2)
    wait_for_kind(core, Hello)
    core.send(Welcome("core-1", 0.1, 2))
    drive(ingest, lambda: len(core.of(Capture)) >= 5)
    with caplog.at_level(logging.WARNING):
        drive(ingest, lambda: not ingest.session.joined)  # the core says nothing: gone after 0.2 s
    assert "has been silent" in caplog.text
    drive(ingest, lambda: ingest.delivery.undelivered >= 5)
    sent_before = len(core.of(Capture))
    hellos = core.of(Hello)  # said again at once, then again after each timeout
    drive(ingest, lambda: len(core.of(Hello)) > len(hellos))
    hello = core.of(Hello)[-1]
    assert hello.undelivered >= 5 and hello.undelivered <= ingest.delivery.undelivered
    assert len(core.of(Capture)) == sent_before  # nothing sent to a core that has not welcomed us
    core.send(Welcome("core-2", 0.1, 2))
    drive(ingest, lambda: len(core.of(Capture)) >= sent_before + 3)
    d = ingest.delivery
    assert d.read == d.sent + d.undelivered + (d.pending is not None)
    # Told once: the next life's Hello carries only what the welcomed one did not.
    told = hello.undelivered
    core.send(Refused("unknown session", rejoin=True))
    drive(ingest, lambda: len(core.of(Hello)) > len(hellos) + 1)
    assert core.of(Hello)[-1].undelivered == d.hello() <= d.undelivered - told


def test_lossless_sends_only_against_credit_and_holds_the_reader_back(core, make):
    camera = FakeCamera(None)  # as fast as it is asked
    ingest = make(camera, lossless=True)
    wait_for_kind(core, Hello)
    core.welcome(credit=3)
    drive(ingest, lambda: len(core.of(Capture)) >= 3)
    drive_for(ingest, 0.3)
    assert len(core.of(Capture)) == 3
    assert camera.yielded <= 3 + 4  # one waiting here, the rest held by the reader's HWMs
    core.send(Credit(2))
    drive(ingest, lambda: len(core.of(Capture)) >= 5)
    drive_for(ingest, 0.2)
    assert len(core.of(Capture)) == 5 and ingest.delivery.undelivered == 0
    # A core that restarted: a new life's credit, not what was left of the old one.
    core.send(Refused("unknown session", rejoin=True))
    drive(ingest, lambda: len(core.of(Hello)) >= 2)
    core.welcome(credit=1)
    drive(ingest, lambda: len(core.of(Capture)) >= 6)
    drive_for(ingest, 0.2)
    assert len(core.of(Capture)) == 6
    assert [c.t_capture for c in core.of(Capture)] == [float(i) for i in range(6)]  # none lost in between


def test_max_frames_ends_the_stream_after_that_many_frames(core, make):
    ingest = make(FakeCamera(None), max_frames=4)
    wait_for_kind(core, Hello)
    core.welcome()
    assert drive(ingest, lambda: False) == "max_frames"
    ingest.finish("max_frames")
    _, ended, _ = wait_for_kind(core, Stats, CaptureEnded, Bye)
    assert len(core.of(Capture)) == 4 and ended.reason == "max_frames (4) read"


def test_a_stop_from_the_core_ends_the_stream(core, make):
    ingest = make(FakeCamera(paced(0.01)))
    wait_for_kind(core, Hello)
    core.welcome()
    drive(ingest, lambda: core.of(Capture))
    core.send(Stop("the pipeline is stopping"))
    assert drive(ingest, lambda: False) == "stop"
    ingest.finish("stop")
    _, ended, bye = wait_for_kind(core, Stats, CaptureEnded, Bye)
    assert ended.reason == "stopped by the core (the pipeline is stopping)"
    assert bye.reason == ended.reason


def test_a_camera_never_reached_ends_as_failed(core, make):
    ingest = make(FakeCamera(connected=False, reason="connection refused"))
    wait_for_kind(core, Hello)
    core.welcome()
    assert drive(ingest, lambda: False) == "failed"
    ingest.finish("failed")
    _, ended, _ = wait_for_kind(core, Stats, CaptureEnded, Bye)
    assert ended.reason == "the camera failed (connection refused)"


def test_without_an_answer_the_camera_is_read_all_the_same_and_the_end_is_not_sent(core, make, caplog):
    ingest = make(FakeCamera(paced(0.01)), heartbeat_s=0.1, heartbeat_misses=2)
    drive(ingest, lambda: ingest.reader_started)  # after the session's timeout
    drive(ingest, lambda: ingest.delivery.undelivered >= 3)
    with caplog.at_level(logging.WARNING):
        ingest.finish("stopped")
    assert "is not joined: it does not hear the stream ended" in caplog.text
    assert not core.of(Capture) and not core.of(CaptureEnded)


def test_a_core_that_refuses_the_stream_for_good_ends_the_loop(core, make, caplog):
    ingest = make(FakeCamera(None))
    wait_for_kind(core, Hello)
    core.send(Refused("64 streams already"))
    with caplog.at_level(logging.ERROR):
        assert ingest.loop(threading.Event()) == "refused"
    assert "refused this ingest: 64 streams already" in caplog.text
    ingest.finish("refused")
    assert not core.of(CaptureEnded)  # inproc: what finish() sent is in the core's queue once it returns


# -- whatever the core sends ----------------------------------------------------------------------

# Messages the session itself handles (Welcome, Refused, Bye, Heartbeat) are tested with it
# (test_session.py); every other kind may reach the ingest's loop.
FROM_CORE = any_message().filter(lambda m: not isinstance(m, Welcome | Refused | Bye | Heartbeat))


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=st.lists(FROM_CORE, max_size=12), frames=st.integers(0, 5))
def test_an_ingest_takes_any_valid_message_from_the_core(sockets, msgs, frames):
    """A capture only against credit, whatever else came; what it does not expect is counted."""
    address = f"inproc://fuzz-core-{uuid.uuid4().hex}"
    core = sockets.bind(zmq.ROUTER, address)
    cfg = IngestConfig(stream="http://pi/s.mjpg", core=address, lossless=True, heartbeat_s=60.0)
    with CameraReader(sockets.ctx, FakeCamera(()), threading.Event()) as reader:
        ingest = Ingest(cfg, sockets.ctx, reader, camera=counters())
        try:
            ingest.start()
            assert core.poll(5000)
            _, identity = zmqio.receive(core, routed=True)
            zmqio.send(core, Welcome("core-1", 60.0, 3), prefix=[identity])
            for msg in msgs:
                zmqio.send(core, msg, prefix=[identity])
            assert ingest.session.sock.poll(5000)
            deadline = time.monotonic() + 5
            while (
                ingest.counts["unexpected_messages"] + sum(isinstance(m, Credit | Stop) for m in msgs) < len(msgs)
                or not ingest.session.joined
            ):
                assert time.monotonic() < deadline, "not every message was taken"
                ingest.session.sock.poll(10)
                ingest._from_core(time.monotonic())
            for i in range(frames):
                if ingest.delivery.accepting:
                    ingest.delivery.add(JpegFrame(JPEG, 24, 16, float(i)))
                ingest._deliver(time.monotonic())
            captures = 0
            while core.poll(0):  # inproc: what was sent is there already
                msg, _ = zmqio.receive(core, routed=True)
                captures += isinstance(msg, Capture)
        finally:
            ingest.close()
    credit = sum(m.n for m in msgs if isinstance(m, Credit))
    assert captures == ingest.delivery.sent == min(frames, credit)
    assert ingest.counts["unexpected_messages"] == sum(not isinstance(m, Credit | Stop) for m in msgs)
    assert (ingest.stop_reason is not None) == any(isinstance(m, Stop) for m in msgs)
