"""The viewer's loop one tick at a time (viewer.py): in-process ZeroMQ publishers, a stand-in window."""

from __future__ import annotations

import threading
import uuid

import cv2
import numpy as np
import pytest
import zmq

from encoders.services.viewer.feed import STATE, VIDEO, WebFeed, raw_key
from encoders.services.viewer.latest import Latest
from encoders.services.viewer.main import open_sockets
from encoders.services.viewer.viewer import Viewer
from encoders.services.viewer.window import Window
from encoders.shared import zmqio
from encoders.shared.messages import Frame, MetricsRecord
from encoders.shared.runtime import StartupError

from ..conftest import wait_for


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


@pytest.fixture
def wired(sockets):
    """(frames PUB, metrics PUB, the viewer's frames SUB, its metrics SUB), all in-process."""
    frames_ep, metrics_ep = (f"inproc://{name}-{uuid.uuid4().hex}" for name in ("frames", "metrics"))
    pubs = [sockets.bind(zmq.PUB, ep) for ep in (frames_ep, metrics_ep)]
    subs = open_sockets(sockets.ctx, [frames_ep], metrics_ep)
    sockets.adopt(*subs)
    return (*pubs, *subs)


def publish_until_received(viewer: Viewer, frames: zmq.Socket, metrics: zmq.Socket, value: int = 90) -> None:
    """A subscription reaches its publisher a moment after connecting: send until both messages arrive."""

    def received() -> bool:
        zmqio.send(frames, Frame("cam0", 3, 1000.0, 160, 120, jpeg(value)), topic=True)
        zmqio.send(metrics, MetricsRecord("cam0", 3, 1000.0, 0.0, "w", "m", similarity=0.9, drift=0.1), topic=True)
        viewer.drain()
        counters = viewer.state.counters
        return counters["frames_received"] > 0 and counters["metrics_received"] > 0

    wait_for(received, 5, "the viewer to receive a frame and a record")


def test_a_tick_shows_the_newest_frame_feeds_the_web_board_and_the_window_can_stop_it(wired):
    frames_pub, metrics_pub, frames, metrics = wired
    window, board = StandInWindow(), Latest()
    viewer = Viewer(frames, metrics, listening=(["tcp://x:1"], "tcp://x:2"), window=window, feed=WebFeed(board))
    assert viewer.tick(100.0)
    assert window.shown[-1].shape == (480, 640, 3)  # the placeholder, before any frame

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
    frames_pub, metrics_pub, frames, metrics = wired
    board = Latest()
    viewer = Viewer(frames, metrics, listening=(["tcp://x:1"], "tcp://x:2"), feed=WebFeed(board))
    publish_until_received(viewer, frames_pub, metrics_pub)
    assert viewer.tick(100.0)
    assert viewer.counters["frames_shown"] == 0 and viewer.state.streams["cam0"].frame is not None
    assert board.get(VIDEO)[0] == 0 and board.get(STATE)[0] == 1  # the numbers go on regardless
    with board.follow(VIDEO):
        assert viewer.tick(100.1)
    assert viewer.counters["frames_shown"] == 1 and board.get(VIDEO)[0] == 1


def test_an_endpoint_that_does_not_parse_is_a_startup_error(sockets):
    # Nothing is left open: the sockets fixture's context terminates at the end.
    with pytest.raises(StartupError, match="cannot connect tcp://nonsense"):
        open_sockets(sockets.ctx, ["tcp://nonsense"], "tcp://127.0.0.1:1")
