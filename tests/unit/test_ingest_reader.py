"""The camera reader thread and its events, over a real inproc PAIR, with a stand-in camera."""

from __future__ import annotations

import itertools
import logging
import threading
import time

import pytest

from encoders.services.ingest import reader as reader_module
from encoders.services.ingest.http_source import JpegFrame
from encoders.services.ingest.reader import PIPE_HWM, CameraReader, ReaderEnded, decode, encode

from ..conftest import wait_for

JPEG = b"\xff\xd8" + bytes(range(256)) * 400 + b"\xff\xd9"  # large enough for ZeroMQ's zero-copy path


class FakeCamera:
    """Yields ``frames`` (forever if None), then ends as a camera source does."""

    def __init__(self, frames=(), *, connected=True, reason="the server ended the stream", crash=False, hang=None):
        self.frame_list = frames
        self.ever_connected = connected
        self.reason = reason
        self.end_reason = ""
        self.crash = crash
        self.hang = hang  # an Event it waits for before anything, deaf to stop (a connect in progress)
        self.yielded = 0
        self.interrupted = False

    def frames(self):
        if self.hang is not None:
            self.hang.wait()
        source = itertools.count() if self.frame_list is None else self.frame_list
        for item in source:
            frame = item if isinstance(item, JpegFrame) else JpegFrame(JPEG, 640, 480, float(item))
            self.yielded += 1
            yield frame
        if self.crash:
            raise RuntimeError("boom")
        self.end_reason = self.reason

    def interrupt(self) -> None:
        self.interrupted = True


@pytest.fixture
def ctx(sockets):
    """The reader's context: the sockets fixture terminates it at the end, and fails the test if
    either end of the PAIR was left open."""
    return sockets.ctx


def events(reader: CameraReader, timeout: float = 5.0) -> list:
    """Every event up to and including ReaderEnded."""
    got: list = []
    while not (got and isinstance(got[-1], ReaderEnded)):
        assert reader.inbox.poll(int(timeout * 1000)), f"no event within {timeout} s; so far {got}"
        got.append(reader.receive())
    return got


# -- the encoding ------------------------------------------------------------------------------


def test_events_round_trip_through_their_encoding():
    frame = JpegFrame(JPEG, 1920, 1080, 1712345678.123456)
    assert decode(encode(frame)) == frame
    ended = ReaderEnded("ended", "the server ended the stream: ü")
    assert decode(encode(ended)) == ended
    assert decode(encode(ReaderEnded("stopped"))) == ReaderEnded("stopped", "")


def test_the_jpeg_is_sent_as_it_is_not_copied_into_a_header():
    frame = JpegFrame(JPEG, 640, 480, 1.5)
    parts = encode(frame)
    assert parts[-1] is JPEG and len(parts[1]) == 16


@pytest.mark.parametrize(
    "parts",
    [[], [b"frame"], [b"frame", b"short", JPEG], [b"ended", b"exploded", b""], [b"eos", b"x", b"y"]],
)
def test_what_is_not_a_reader_event_is_a_bug(parts):
    with pytest.raises(ValueError):
        decode(parts)


# -- the thread --------------------------------------------------------------------------------


def test_frames_arrive_in_order_then_how_the_stream_ended(ctx):
    stop = threading.Event()
    with CameraReader(ctx, FakeCamera(range(5)), stop) as reader:
        reader.start()
        got = events(reader)
    assert [f.t_arrival for f in got[:-1]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(f.jpeg == JPEG and (f.width, f.height) == (640, 480) for f in got[:-1])
    assert got[-1] == ReaderEnded("ended", "the server ended the stream")


@pytest.mark.parametrize(
    ("camera", "outcome"),
    [
        (FakeCamera(connected=False, reason="connection refused"), ReaderEnded("failed", "connection refused")),
        (FakeCamera(range(2), crash=True), ReaderEnded("failed", "")),
    ],
)
def test_a_camera_never_reached_or_a_crash_is_a_failure(ctx, camera, outcome, caplog):
    with CameraReader(ctx, camera, threading.Event()) as reader:
        reader.start()
        assert events(reader)[-1] == outcome
    assert ("the camera reader crashed" in caplog.text) == camera.crash


def test_the_reader_waits_while_nobody_reads_and_sends_nothing_when_stopped(ctx):
    camera = FakeCamera(None)  # as many frames as it is asked for
    stop = threading.Event()
    reader = CameraReader(ctx, camera, stop)
    reader.start()
    full = 2 * PIPE_HWM + 1  # the pipe's frames, and the one the reader waits to send
    wait_for(lambda: camera.yielded >= full, 5, "the reader to fill the pipe")
    time.sleep(0.3)  # simulates a while with nobody reading: time the reader would use to run ahead
    assert camera.yielded == full  # the pipe's HWMs hold the reader back: it stops asking the camera
    reader.receive()
    time.sleep(0.1)  # simulates a while again: the reader may read one more, no more
    assert camera.yielded <= full + 1  # one taken, one more read
    reader.interrupt()
    assert stop.is_set() and camera.interrupted
    reader._thread.join(1.0)
    assert not reader._thread.is_alive()  # a blocked send looks at stop
    reader.close()


def test_a_reader_stuck_in_a_connect_is_left_behind_with_its_socket_closed(ctx, monkeypatch, caplog):
    monkeypatch.setattr(reader_module, "JOIN_WAIT", 0.1)
    hang = threading.Event()
    camera = FakeCamera(range(3), hang=hang)
    with caplog.at_level(logging.INFO, logger="encoders.ingest"):
        with CameraReader(ctx, camera, threading.Event()) as reader:
            reader.start()
        assert "leaving that connection attempt behind" in caplog.text
    # The ctx fixture's term() returns: both ends of the PAIR are closed. If the connect
    # answers later, the reader finds its socket gone and ends without sending anything.
    hang.set()
    reader._thread.join(1.0)
    assert not reader._thread.is_alive() and camera.yielded == 1
