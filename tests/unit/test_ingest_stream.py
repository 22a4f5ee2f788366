"""The ingest's loop (stream.py) against a stand-in core: a ROUTER the test holds, over inproc, and a
stand-in camera behind the real reader thread. The test drives the loop one step at a time."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encoders.services.ingest import stream as stream_module
from encoders.services.ingest.config import IngestConfig
from encoders.services.ingest.http_source import JpegFrame
from encoders.services.ingest.reader import PIPE_HWM, CameraReader, ReaderEnded, ReaderEvent
from encoders.services.ingest.stream import Ingest
from encoders.shared import zmqio
from encoders.shared.messages import (
    Assigned,
    Assignment,
    Bye,
    Captured,
    CaptureEnded,
    Credit,
    Frame,
    Heartbeat,
    Hello,
    Message,
    NoPictures,
    Pictures,
    Preview,
    Refused,
    Stats,
    Stop,
    WantPictures,
    Welcome,
    Workers,
)

from ..fake_core import Capture
from .message_strategies import any_message
from .test_ingest_reader import JPEG, FakeCamera

CORE = "inproc://core"
URL = "http://pi:secret@camera:8000/stream.mjpg"


class Core:
    """The test's stand-in for the core's ROUTER: what the ingest sent, heartbeats left out; each
    capture a Captured announced is in ``got`` as a Capture (without its JPEG, which stays with the
    ingest). Protocol 3: the stand-in assigns every capture to its one worker, whose data socket it
    holds too (``pictures``: what reached it)."""

    def __init__(self, sockets) -> None:
        self.sock = sockets.bind(zmq.ROUTER, CORE)
        self.data_ep = f"inproc://data-{uuid.uuid4().hex}"
        self.data = sockets.bind(zmq.ROUTER, self.data_ep)
        self.identity = b""
        self.got: list[Message | Capture] = []
        self.announced: list[int] = []  # the rows of each Captured
        self.pictures: list[Frame] = []
        self.seqs = itertools.count()
        self.answer = True  # False: the captures announced are kept in ``unanswered``, not assigned
        self.unanswered: list[Assignment] = []

    def collect(self) -> None:
        while self.sock.poll(0):
            msg, identity = zmqio.receive(self.sock, routed=True)
            assert msg is not None and identity is not None
            self.identity = identity
            if isinstance(msg, Captured):
                rows = msg.rows()
                self.announced.append(len(rows))
                self.got += [Capture(r.t_capture, r.width, r.height) for r in rows]
                decided = [Assignment(r.id, next(self.seqs), 1) for r in rows]
                if not self.answer:
                    self.unanswered += decided
                    continue
                try:
                    self.send(Assigned.of(decided))
                except zmq.ZMQError:  # the ingest has gone meanwhile (its end): nobody to answer
                    pass
            elif not isinstance(msg, Heartbeat):
                self.got.append(msg)
        while self.data.poll(0):
            msg, _ = zmqio.receive(self.data, routed=True)
            assert isinstance(msg, Pictures)
            self.pictures += msg.frames()

    def of(self, kind: type) -> list:
        self.collect()
        return [m for m in self.got if isinstance(m, kind)]

    def send(self, msg: Message) -> None:
        zmqio.send(self.sock, msg, prefix=[self.identity])

    def welcome(self, credit: int = 0) -> None:
        self.send(Welcome("core-1", 5.0, 3, credit=credit))
        self.send(Workers({"1": {"address": self.data_ep, "key": ""}}))

    def delivered(self) -> list[Frame]:
        self.collect()
        return self.pictures


@pytest.fixture
def core(sockets):
    return Core(sockets)


@pytest.fixture
def make(sockets):
    """make(camera, **settings) -> an Ingest whose session has said Hello, with a reader thread for the
    camera it was given (or that feed itself: a ``Burst``)."""
    made: list[tuple[Ingest, CameraReader | Burst]] = []

    def start(camera: FakeCamera | Burst, **settings) -> Ingest:
        cfg = IngestConfig(**{"stream": URL, "stream_id": "cam0", "core": CORE, "heartbeat_s": 5.0, **settings})
        reader = camera if isinstance(camera, Burst) else CameraReader(sockets.ctx, camera, threading.Event())
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


class Burst:
    """A feed (feed.py) whose first read gives ``n`` frames at once, as a read of an MJPEG camera that is
    ahead does (http_source.py: up to 256 KB a read), then ends."""

    def __init__(self, n: int) -> None:
        frames: list[ReaderEvent] = [JpegFrame(JPEG, 640, 480, float(i)) for i in range(n)]
        self.events = deque([*frames, ReaderEnded("ended", "the server ended the stream")])

    def start(self) -> None:
        pass

    def poll_on(self) -> None:
        return None

    def wait_s(self, now: float) -> float | None:
        return 0.0 if self.events else None

    def fill(self, now: float, readable: bool) -> None:
        pass

    def take(self) -> ReaderEvent | None:
        return self.events.popleft() if self.events else None

    def watch(self, now: float, on: bool) -> None:
        pass

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        pass


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
    assert not ingest.feed_started and not core.of(Capture)  # the camera waits for the core's answer
    core.welcome()
    assert drive(ingest, lambda: False) == "ended"
    captures = core.of(Capture)
    assert [c.t_capture for c in captures] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # Each announced capture, once assigned, goes to its worker's data socket: the JPEG as the camera sent it.
    drive(ingest, lambda: len(core.delivered()) >= 5)
    pictures = core.delivered()
    assert [(p.seq, p.t_capture) for p in pictures] == [(i, float(i)) for i in range(5)]
    assert all(p.jpeg == JPEG and (p.width, p.height) == (640, 480) for p in pictures)
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


def test_the_frames_of_one_read_are_announced_in_one_captured(core, make):
    """Not the first alone and the rest 2 ms later: they came at the same moment."""
    ingest = make(Burst(5))
    wait_for_kind(core, Hello)
    core.welcome()
    assert drive(ingest, lambda: False) == "ended"
    assert len(core.of(Capture)) == 5 and core.announced == [5]


def test_wanted_pictures_come_from_the_ring_and_those_gone_from_it_are_said_gone(core, make):
    ingest = make(FakeCamera(range(5)), picture_ring=3)
    wait_for_kind(core, Hello)
    core.welcome()
    assert drive(ingest, lambda: False) == "ended"
    drive(ingest, lambda: len(core.delivered()) >= 5)  # seqs 0-4 sent to the worker: 2, 3, 4 kept
    core.send(WantPictures.of("cam0", [1, 3, 4, 9]))
    drive(ingest, lambda: core.of(NoPictures))
    pictures, gone = wait_for_kind(core, Pictures, NoPictures)
    assert not pictures.preview and [f.seq for f in pictures.frames()] == [3, 4]
    assert (gone.stream, gone.seqs()) == ("cam0", [1, 9])  # the recorder need not wait for those
    assert (ingest.counts["pictures_wanted"], ingest.counts["pictures_gone"]) == (2, 2)


def test_a_capture_waiting_to_be_announced_is_waited_for_without_spinning(core, make, monkeypatch):
    """A capture waits up to 2 ms to be announced with the next ones: the loop polls until then in whole
    milliseconds rounded up, never 0 ms before it is due (rounded down, it spun about ten turns a frame)."""
    ingest = make(FakeCamera(paced(0.001)))  # a frame every 1 ms: each waits to be grouped (2 ms apart: at once)
    wait_for_kind(core, Hello)
    core.welcome()
    polls: list[tuple[int, float | None]] = []  # (timeout ms, how long the waiting capture had left)
    real = ingest.poller.poll

    def poll(timeout: int | None = None) -> list:
        polls.append((timeout if timeout is not None else -1, ingest.outbox.wait_s(time.monotonic())))
        return real(timeout)

    monkeypatch.setattr(ingest.poller, "poll", poll)
    drive(ingest, lambda: len(core.of(Capture)) >= 5)
    waited = [(t, left) for t, left in polls if left is not None]
    assert waited, "no capture ever waited to be announced"
    assert [(t, left) for t, left in waited if t == 0 and left > 0] == []


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
    # One waiting here, the pipe's frames, and the one the reader waits to send: the camera is held back.
    assert camera.yielded <= 3 + 1 + 2 * PIPE_HWM + 1
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
    # The stand-in core answers while the ingest ends (its last captures announced then: decided, not waited
    # out). Its sockets are the pump's alone until it stops, the ingest's the main thread's.
    done = threading.Event()
    pump = threading.Thread(target=lambda: [core.collect() for _ in iter(lambda: done.wait(0.005), True)])
    pump.start()
    try:
        ingest.finish("max_frames")
    finally:
        done.set()
        pump.join()
    _, ended, _ = wait_for_kind(core, Stats, CaptureEnded, Bye)
    assert len(core.of(Capture)) == 4 and ended.reason == "max_frames (4) read"
    assert len(core.delivered()) == 4  # each decided before the end, and its picture sent


class Polls:
    """The ingest's waits on its session (``sock.poll``): (timeout ms, events) of each."""

    def __init__(self, ingest: Ingest, monkeypatch) -> None:
        self.calls: list[tuple[int, int]] = []
        real = ingest.session.sock.poll

        def poll(timeout: int | None = None, flags: int = zmq.POLLIN) -> int:
            self.calls.append((timeout if timeout is not None else -1, flags))
            return real(timeout, flags)

        monkeypatch.setattr(ingest.session.sock, "poll", poll)

    def waited_ms(self) -> int:
        """What it was ready to wait for the core's messages, in all."""
        return sum(timeout for timeout, flags in self.calls if flags & zmq.POLLIN)


def test_finishing_with_nothing_pending_does_not_wait_for_the_core(core, make, monkeypatch):
    ingest = make(FakeCamera(range(3)))
    wait_for_kind(core, Hello)
    core.welcome()
    assert drive(ingest, lambda: False) == "ended"
    drive(ingest, lambda: len(core.delivered()) >= 3 and not ingest.outbox.announced)  # every capture decided
    polls = Polls(ingest, monkeypatch)
    ingest.finish("ended")
    assert polls.waited_ms() == 0  # not a poll for the core's messages
    wait_for_kind(core, Stats, CaptureEnded, Bye)


def test_finishing_waits_for_undecided_captures_at_most_a_heartbeat(core, make, monkeypatch):
    """The stand-in core does not answer while the ingest ends: the captures announced last are never
    decided, and the ingest waits for them at most one heartbeat (settle_s), not END_WAIT."""
    ingest = make(FakeCamera(None), max_frames=4, heartbeat_s=0.2)
    wait_for_kind(core, Hello)
    core.welcome()
    assert drive(ingest, lambda: False) == "max_frames"
    assert len(ingest.outbox) and ingest.settle_s() == 0.2 < stream_module.END_WAIT  # captures not decided
    polls = Polls(ingest, monkeypatch)
    ingest.finish("max_frames")
    assert 0 < polls.waited_ms() <= 200 + len(polls.calls)  # each poll rounds up by 1 ms
    _, ended, _ = wait_for_kind(core, Stats, CaptureEnded, Bye)
    assert ended.reason == "max_frames (4) read"  # it ended all the same (the core drops what it did not decide)


def test_lossless_the_end_waits_for_every_capture_the_core_assigns_however_slowly(core, make, caplog):
    """Lossless, the captures announced wait for a worker's room, which a drain gives slowly: the
    ingest says CaptureEnded, then waits while the core goes on deciding (each decision more than a
    heartbeat after the last), sends every picture to its worker, and only then says Bye."""
    ingest = make(FakeCamera(range(4)), lossless=True, heartbeat_s=0.2)
    wait_for_kind(core, Hello)
    core.answer = False
    core.welcome(credit=8)
    assert drive(ingest, lambda: False) == "ended"
    finishing = threading.Thread(target=ingest.finish, args=("ended",))
    finishing.start()
    try:
        wait_for_kind(core, Stats, CaptureEnded)
        assert len(core.unanswered) == 4 and ingest.settle_s() > 3 * 0.2
        for decided in list(core.unanswered):
            time.sleep(0.4)  # slower than a heartbeat, as a drain of a full queue is: the core is alive
            assert finishing.is_alive()  # still waiting for this decision (after the last, it may end at once)
            core.send(Assigned.of([decided]))
    finally:
        finishing.join(10)
    assert not finishing.is_alive()
    assert len(core.delivered()) == 4  # every picture reached its worker
    assert isinstance(core.of(Bye)[-1], Bye) and "not decided at the end" not in caplog.text


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
    drive(ingest, lambda: ingest.feed_started)  # after the session's timeout
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
                ingest.counts["unexpected_messages"]
                + sum(isinstance(m, Credit | Stop | Assigned | Workers | Preview | WantPictures) for m in msgs)
                < len(msgs)
                or not ingest.session.joined
            ):
                assert time.monotonic() < deadline, "not every message was taken"
                ingest.session.sock.poll(10)
                ingest._from_core(time.monotonic())
            for i in range(frames):
                if ingest.delivery.accepting:
                    ingest.delivery.add(JpegFrame(JPEG, 24, 16, float(i)))
                ingest._deliver(time.monotonic())
            ingest._announce(time.monotonic(), force=True)
            captures = 0
            while core.poll(0):  # inproc: what was sent is there already
                msg, _ = zmqio.receive(core, routed=True)
                captures += msg.n if isinstance(msg, Captured) else 0
        finally:
            ingest.close()
    credit = sum(m.n for m in msgs if isinstance(m, Credit))
    assert captures == ingest.delivery.sent == min(frames, credit)
    expected = Credit | Stop | Assigned | Workers | Preview | WantPictures
    assert ingest.counts["unexpected_messages"] == sum(not isinstance(m, expected) for m in msgs)
    assert (ingest.stop_reason is not None) == any(isinstance(m, Stop) for m in msgs)
