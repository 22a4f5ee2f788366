"""The viewer's loop one tick at a time (viewer.py): in-process ZeroMQ publishers, a stand-in window;
and where it subscribes (subscriptions.py): the publishers given, or those a core (a ROUTER the
test holds) names in its Welcome. Time is passed in, so no test waits for a heartbeat."""

from __future__ import annotations

import logging
import threading
import uuid

import cv2
import numpy as np
import pytest
import zmq

from encoders.services.viewer.feed import STATE, VIDEO, WebFeed, raw_key
from encoders.services.viewer.latest import Latest
from encoders.services.viewer.subscriptions import Subscriptions, core_lines, listening_lines, open_sockets
from encoders.services.viewer.viewer import Viewer
from encoders.services.viewer.window import Window
from encoders.shared import zmqio
from encoders.shared.messages import (
    PROTOCOL,
    Bye,
    Frame,
    Hello,
    Message,
    MetricsRecord,
    Records,
    Refused,
    Stopped,
    Welcome,
)
from encoders.shared.runtime import StartupError
from encoders.shared.settings import CoreConnection

from ..conftest import endpoint, wait_for


class StandInWindow(Window):
    """Opens nothing: records what it was shown, and answers ``reason`` (why to stop) once set."""

    def __init__(self) -> None:
        super().__init__("test")
        self.shown: list[np.ndarray] = []
        self.reason: str | None = None

    def show(self, video, drift_history, now) -> str | None:
        self.shown.append(video)
        return self.reason


def jpeg(value: int) -> bytes:
    ok, out = cv2.imencode(".jpg", np.full((120, 160, 3), value, np.uint8))
    assert ok
    return out.tobytes()


def inproc(name: str) -> str:
    return f"inproc://{name}-{uuid.uuid4().hex}"


@pytest.fixture
def wired(sockets):
    """(frames PUB, metrics PUB, the viewer's subscriptions to them), all in-process."""
    frames_ep, metrics_ep = inproc("frames"), inproc("metrics")
    pubs = [sockets.bind(zmq.PUB, ep) for ep in (frames_ep, metrics_ep)]
    subscriptions = Subscriptions(sockets.ctx, [frames_ep], metrics_ep)
    sockets.adopt(*subscriptions.sockets)
    return (*pubs, subscriptions)


def publish_until_received(viewer: Viewer, frames: zmq.Socket, metrics: zmq.Socket, value: int = 90) -> None:
    """A subscription reaches its publisher a moment after connecting: send until both messages arrive."""

    def received() -> bool:
        zmqio.send(frames, Frame("cam0", 3, 1000.0, 160, 120, jpeg(value)), topic=True)
        record = MetricsRecord("cam0", 3, 1000.0, 0.0, "w", "m", similarity=0.9, drift=0.1)
        zmqio.send(metrics, Records.of([record]), topic=True)  # as the core publishes records: in a batch
        viewer.drain(99.0)  # before the ticks at 100.0
        counters = viewer.state.counters
        return counters["frames_received"] > 0 and counters["metrics_received"] > 0

    wait_for(received, 5, "the viewer to receive a frame and a record")


def test_a_tick_shows_the_newest_frame_feeds_the_web_board_and_the_window_can_stop_it(wired):
    frames_pub, metrics_pub, subscriptions = wired
    window, board = StandInWindow(), Latest()
    viewer = Viewer(subscriptions, window=window, feed=WebFeed(board))
    assert viewer.tick(100.0)
    assert window.shown[-1].shape == (480, 640, 3)  # the placeholder, before any frame
    assert subscriptions.waiting_lines() == listening_lines(subscriptions.frames, subscriptions.metrics)
    assert board.get(STATE)[1]["waiting"] is None  # subscribed at once: nobody to wait for

    publish_until_received(viewer, frames_pub, metrics_pub)
    assert viewer.tick(101.0)  # the web numbers are put a few times a second: this is a second later
    assert window.shown[-1].shape == (120, 160, 3)  # the frame, with its overlay
    assert viewer.counters["frames_shown"] == 1 and "cam0" in viewer.images
    assert board.get(raw_key("cam0"))[0] >= 1  # the raw frame, as it came
    assert board.get(STATE)[1]["streams"][0]["drift"] == pytest.approx(0.1)
    assert viewer.all_counters()["metrics_received"] >= 1

    window.reason = "quit key pressed"
    assert not viewer.tick(102.0)
    stop = threading.Event()
    viewer.run(stop)  # returns at the first tick, as the window asks
    stop.set()
    viewer.run(stop)  # returns at once


def test_with_nobody_watching_frames_wait_undecoded_for_the_first_web_viewer(wired):
    frames_pub, metrics_pub, subscriptions = wired
    board = Latest()
    viewer = Viewer(subscriptions, feed=WebFeed(board))
    publish_until_received(viewer, frames_pub, metrics_pub)
    assert viewer.tick(100.0)
    assert viewer.counters["frames_shown"] == 0 and viewer.state.streams["cam0"].frame is not None
    assert board.get(VIDEO)[0] == 0 and board.get(STATE)[0] == 1  # the numbers go on regardless
    with board.follow(VIDEO):
        assert viewer.tick(100.1)
    assert viewer.counters["frames_shown"] == 1 and board.get(VIDEO)[0] == 1


def test_the_pipelines_stop_on_the_metrics_publisher_ends_the_loop_saying_so(wired, caplog):
    frames_pub, metrics_pub, subscriptions = wired
    window = StandInWindow()
    viewer = Viewer(subscriptions, window=window, feed=WebFeed(Latest()))
    publish_until_received(viewer, frames_pub, metrics_pub)
    assert viewer.tick(100.0)
    totals = {"cam0": {"published": 4, "embedded": 3, "dropped": 1, "skipped": 0, "lost": 0}}
    zmqio.send(metrics_pub, Stopped(totals), topic=True)  # type: ignore[arg-type]
    shown = len(window.shown)
    with caplog.at_level(logging.INFO, logger="encoders.viewer"):
        wait_for(lambda: not viewer.tick(100.1), 5, "the viewer to take the stop")
        stop = threading.Event()
        viewer.run(stop)  # returns at once: the pipeline has stopped (stop was never set)
    assert viewer.stopped is not None and viewer.stopped.streams == totals
    assert len(window.shown) == shown  # nothing drawn after it
    assert "the pipeline has stopped (frames embedded/published: cam0 3/4): exiting" in caplog.text


def test_an_endpoint_that_does_not_parse_is_a_startup_error(sockets):
    # Nothing is left open: the sockets fixture's context terminates at the end.
    with pytest.raises(StartupError, match="cannot connect tcp://nonsense"):
        open_sockets(sockets.ctx, ["tcp://nonsense"], "tcp://127.0.0.1:1")
    with pytest.raises(StartupError, match="cannot connect tcp://nonsense"):
        open_sockets(sockets.ctx, ["tcp://127.0.0.1:1"], "tcp://nonsense")  # the frames socket is closed too


# -- asking the core where its publishers are ------------------------------------------------------


class Core:
    """The test's stand-in for the core's ROUTER (as tests/unit/test_session.py's)."""

    def __init__(self, sockets, endpoint: str) -> None:
        self.sock = sockets.bind(zmq.ROUTER, endpoint)
        self.endpoint = sockets_endpoint(self.sock, endpoint)

    def receive(self) -> tuple[bytes, Message | None]:
        assert self.sock.poll(2000), "the core received nothing"
        msg, identity = zmqio.receive(self.sock, routed=True)
        assert identity is not None
        return identity, msg

    def send(self, identity: bytes, msg: Message) -> None:
        zmqio.send(self.sock, msg, prefix=[identity])


def sockets_endpoint(sock: zmq.Socket, asked: str) -> str:
    return endpoint(sock) if asked.startswith("tcp://") else asked


def asking(sockets, core: str, frames: str = "", metrics: str = "") -> Subscriptions:
    """Subscriptions as the viewer makes them from its settings (--core, --frames, --metrics)."""
    subscriptions = Subscriptions.from_config(sockets.ctx, CoreConnection(core=core), frames, metrics)
    if subscriptions.session is not None:
        sockets.adopt(subscriptions.session.sock)
    sockets.adopt(*subscriptions.sockets)
    return subscriptions


def step_until_hello(subscriptions: Subscriptions, core: Core, now: float) -> tuple[bytes, Hello]:
    """Steps (as the viewer's ticks do) until the core has the viewer's Hello (a TCP connection
    takes a moment: the Hello is said again at every step until one is up)."""
    for i in range(200):
        subscriptions.step(now + i * 0.001)
        if core.sock.poll(10):
            identity, hello = core.receive()
            assert isinstance(hello, Hello)
            return identity, hello
    raise AssertionError("no Hello reached the core")


def stepped(subscriptions: Subscriptions, now: float) -> bool:
    """One step; whether it has subscribed."""
    subscriptions.step(now)
    return subscriptions.subscribed


def test_the_core_names_the_publishers_then_the_viewer_says_bye_and_subscribes(sockets):
    core = Core(sockets, inproc("core"))
    frames_ep, metrics_ep = inproc("frames"), inproc("metrics")
    frames_pub, metrics_pub = sockets.bind(zmq.PUB, frames_ep), sockets.bind(zmq.PUB, metrics_ep)
    subscriptions = asking(sockets, core.endpoint)
    window, board = StandInWindow(), Latest()
    viewer = Viewer(subscriptions, window=window, feed=WebFeed(board))

    assert viewer.tick(100.0)
    identity, hello = core.receive()
    assert isinstance(hello, Hello) and (hello.role, hello.protocol) == ("viewer", PROTOCOL)
    # Until the core answers: the window's placeholder and the page name the core and the setting.
    assert not subscriptions.subscribed and subscriptions.waiting_lines() == core_lines(core.endpoint)
    assert f"  {core.endpoint}" in core_lines(core.endpoint) and "  (--core / ENCODERS_CORE)" in core_lines("x")
    assert window.shown[-1].shape == (480, 640, 3)
    waiting = board.get(STATE)[1]["waiting"]
    assert core.endpoint in waiting and "ENCODERS_CORE" in waiting

    core.send(identity, Welcome("core-1", 1.0, 3, frames=frames_ep, metrics=metrics_ep))
    assert viewer.tick(100.5)
    assert subscriptions.subscribed and subscriptions.session is None
    assert (subscriptions.frames, subscriptions.metrics) == ([frames_ep], metrics_ep)
    assert isinstance(core.receive()[1], Bye)  # it holds no session after that
    assert subscriptions.waiting_lines() == listening_lines([frames_ep], metrics_ep)
    publish_until_received(viewer, frames_pub, metrics_pub)
    assert viewer.tick(101.0) and window.shown[-1].shape == (120, 160, 3)
    assert board.get(STATE)[1]["waiting"] is None


def test_a_wildcard_host_becomes_the_host_the_viewer_reached_the_core_at(sockets):
    core = Core(sockets, "tcp://127.0.0.1:0")
    frames_pub, metrics_pub = sockets.bind(zmq.PUB), sockets.bind(zmq.PUB)
    frames_port, metrics_port = (endpoint(p).rsplit(":", 1)[1] for p in (frames_pub, metrics_pub))
    subscriptions = asking(sockets, core.endpoint)
    identity, _ = step_until_hello(subscriptions, core, 0.0)
    # As a core that bound every interface names them.
    core.send(identity, Welcome("c", 1.0, 3, frames=f"tcp://0.0.0.0:{frames_port}", metrics=f"tcp://*:{metrics_port}"))
    wait_for(lambda: stepped(subscriptions, 1.0), 5, "the Welcome")
    assert subscriptions.frames == [f"tcp://127.0.0.1:{frames_port}"]
    assert subscriptions.metrics == f"tcp://127.0.0.1:{metrics_port}"
    sockets.adopt(*subscriptions.sockets)
    viewer = Viewer(subscriptions)
    publish_until_received(viewer, frames_pub, metrics_pub)  # and they are the publishers: it receives


def test_explicit_publishers_skip_the_core_and_one_given_is_kept_over_the_cores(sockets):
    core = Core(sockets, inproc("core"))
    frames_ep, metrics_ep = inproc("frames"), inproc("metrics")
    both = asking(sockets, core.endpoint, frames_ep, metrics_ep)
    assert both.session is None and both.subscribed and both.poll_sockets() == both.sockets
    both.step(0.0)
    assert not core.sock.poll(100)  # nothing said to the core
    # --frames alone: the core is asked, for the metrics publisher only.
    one = asking(sockets, core.endpoint, frames=frames_ep)
    one.step(0.0)
    identity, _ = core.receive()
    core.send(identity, Welcome("c", 1.0, 3, frames=inproc("cores-frames"), metrics=metrics_ep))
    wait_for(lambda: stepped(one, 0.1), 5, "the Welcome")
    sockets.adopt(*one.sockets)
    assert (one.frames, one.metrics) == ([frames_ep], metrics_ep)


def test_a_core_that_does_not_answer_is_waited_for_and_said_then_subscribed_to(sockets, caplog):
    core_ep = inproc("core")
    subscriptions = asking(sockets, core_ep)  # nobody there yet
    with caplog.at_level(logging.WARNING):
        subscriptions.step(0.0)
        subscriptions.step(1.0)
        assert not caplog.records
        subscriptions.step(3.2)
    assert f"no answer from the core at {core_ep} (ENCODERS_CORE) for 3 s" in caplog.text
    assert not subscriptions.subscribed and subscriptions.waiting_lines() == core_lines(core_ep)
    # The core comes up: the Hello said again reaches it, and its answer is taken.
    core = Core(sockets, core_ep)
    identity, _ = step_until_hello(subscriptions, core, 4.0)
    core.send(identity, Welcome("c", 1.0, 3, frames=inproc("f"), metrics=inproc("m")))
    wait_for(lambda: stepped(subscriptions, 5.0), 5, "the Welcome")
    sockets.adopt(*subscriptions.sockets)


@pytest.mark.parametrize(
    "answer, error",
    [
        (Refused("protocol 1, but this core speaks protocol 2"), "refused this viewer: protocol 1"),
        (Welcome("c", 1.0, 3, frames="", metrics="inproc://m"), "named no frames publisher in its Welcome"),
    ],
)
def test_a_core_that_refuses_viewers_or_names_no_publisher_is_a_startup_error(sockets, answer, error):
    core = Core(sockets, inproc("core"))
    subscriptions = asking(sockets, core.endpoint)
    subscriptions.step(0.0)
    identity, _ = core.receive()
    core.send(identity, answer)
    assert subscriptions.session is not None and subscriptions.session.sock.poll(2000)
    with pytest.raises(StartupError, match=error):
        subscriptions.step(0.1)
    subscriptions.close()
