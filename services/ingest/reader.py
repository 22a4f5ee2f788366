"""The camera reader thread and what it tells the main thread: frames, then why it ended.

A video camera's pictures are decoded and compressed to JPEG (av_source.py, pictures.py): work
that runs in a thread of its own, beside the main thread; ZeroMQ sockets are not thread-safe,
so it hands its events to the main thread over an inproc PAIR, the one socket it owns. To the
main thread it is a feed (feed.py). An MJPEG camera needs no thread: http_source.py.

The events are ingest's own, not wire messages: a ``JpegFrame`` as the source read it
(unnumbered: the core numbers frames), and a final ``ReaderEnded`` saying how and why the
reading ended.

Backpressure: the PAIR holds at most 2 x PIPE_HWM frames, and ``ReaderOutbox.send`` waits
while it is full. In lossless mode the main thread stops reading while a frame waits for the
core's credit, so the pipe fills, the reader stops reading the camera's socket, and TCP
backpressure reaches the camera.

Encoding over the PAIR (both ends are this module; nothing is pickled):

    frame:  b"frame", struct(width, height, t_arrival), jpeg   (the JPEG sent without a copy)
    ended:  b"ended", outcome (UTF-8), reason (UTF-8)
"""

from __future__ import annotations

import logging
import struct
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast, get_args

import zmq

from encoders.shared import zmqio

from .pictures import JpegFrame, SourceItem

log = logging.getLogger("encoders.ingest")

# Frames each end of the pipe holds (inproc adds the two: the reader may be 32 frames ahead of the
# main thread, 1.7 MB at 640x480). With one each, a reader ahead of the main thread slept and was
# woken for every frame; ZeroMQ tells a full pipe's writer of room once every half pipe read, so
# with 16 it is woken once for 16 frames: the ingest's CPU a frame at full speed was 0.93 (one
# camera) and 0.80 (eight) of what it was with 1 (issue #21, benchmarks/RESULTS.md).
PIPE_HWM = 16
POLL_MS = 100  # how often a reader waiting for the main thread looks at the stop event
JOIN_WAIT = 1.0  # seconds shutdown waits for the reader to let go of the camera

# stopped: the service is stopping; ended: the stream ended (reconnect off);
# failed: never connected, or the reader crashed.
Outcome = Literal["stopped", "ended", "failed"]


@dataclass(frozen=True)
class ReaderEnded:
    """The reader's last event: no frame follows. ``reason`` in words, for the log."""

    outcome: Outcome
    reason: str = ""


ReaderEvent = JpegFrame | ReaderEnded

_FRAME, _ENDED = b"frame", b"ended"
_FRAME_HEADER = struct.Struct("<IId")  # width, height, t_arrival


def encode(event: ReaderEvent) -> list[Any]:
    """A reader event -> the parts sent over the PAIR."""
    if isinstance(event, JpegFrame):
        return [_FRAME, _FRAME_HEADER.pack(event.width, event.height, event.t_arrival), event.jpeg]
    return [_ENDED, event.outcome.encode(), event.reason.encode()]


def decode(parts: Sequence[Any]) -> ReaderEvent:
    """The parts received over the PAIR (bytes or zmq.Frame) -> the reader event.

    Both ends are this module, so a message that does not decode is a bug: ValueError.
    """
    data = [p.buffer if isinstance(p, zmq.Frame) else p for p in parts]
    tag = bytes(data[0]) if data else b""
    if tag == _FRAME and len(data) == 3 and len(data[1]) == _FRAME_HEADER.size:
        width, height, t_arrival = _FRAME_HEADER.unpack(data[1])
        return JpegFrame(bytes(data[2]), width, height, t_arrival)
    if tag == _ENDED and len(data) == 3:
        outcome = bytes(data[1]).decode()
        if outcome in get_args(Outcome):
            return ReaderEnded(cast(Outcome, outcome), bytes(data[2]).decode())
    raise ValueError(f"not a reader event: {[bytes(p)[:16] for p in data]!r}")


class Camera(Protocol):
    """What the reader needs of its source (AvSource; a stand-in in tests). A source gives JPEGs, or
    decoded pictures the reader compresses (pictures.py)."""

    end_reason: str
    ever_connected: bool

    def frames(self) -> Iterator[SourceItem]: ...

    def interrupt(self) -> None: ...


class ReaderOutbox:
    """The reader thread's end of the PAIR.

    Only the reader uses it, except at shutdown: a reader stuck in a connect cannot be
    interrupted, so the main thread closes the socket for it. The lock makes that a
    hand-over between threads (what ZeroMQ allows) instead of a concurrent use.
    """

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock: zmq.Socket | None = sock
        self._lock = threading.Lock()

    def send(self, event: ReaderEvent, stop: threading.Event) -> bool:
        """Send, blocking while the main thread is not reading (lossless backpressure), unless stopped."""
        while not stop.is_set():
            with self._lock:
                if self._sock is None:
                    return False
                if self._sock.poll(POLL_MS, zmq.POLLOUT):
                    try:
                        self._sock.send_multipart(encode(event), flags=zmq.NOBLOCK, copy=False)
                        return True
                    except zmq.Again:  # writable at the poll, not at the send (the main thread's end
                        continue  # closing, at the stream's end): again, until it is or we are stopped
        return False

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close(0)
                self._sock = None


def read_camera(
    outbox: ReaderOutbox, source: Camera, stop: threading.Event, to_jpeg: Callable[[SourceItem], JpegFrame | None]
) -> None:
    """Thread: frames from the camera to the main thread, then a ReaderEnded saying why it ended."""
    outcome: Outcome = "stopped"
    try:
        for item in source.frames():
            frame = to_jpeg(item)
            if frame is not None and not outbox.send(frame, stop):
                break
        if not stop.is_set():
            outcome = "ended" if source.ever_connected else "failed"
    except Exception:
        log.exception("the camera reader crashed")
        outcome = "failed"
    finally:
        outbox.send(ReaderEnded(outcome, source.end_reason), stop)
        outbox.close()


class CameraReader:
    """The reader thread and both ends of its PAIR; to the main thread, a feed (feed.py) of one
    event a turn, polled on ``inbox``.

    Opening raises StartupError if the PAIR cannot be made (from ``zmqio.open_socket``).
    """

    def __init__(
        self,
        ctx: zmq.Context,
        source: Camera,
        stop: threading.Event,
        to_jpeg: Callable[[SourceItem], JpegFrame | None] = lambda item: item if isinstance(item, JpegFrame) else None,
    ) -> None:
        self.source = source
        self.stop = stop
        # A name never used before: ZeroMQ frees an inproc name some time after its socket closes,
        # and id(self) of a reader made after another was closed can be the same (tests saw
        # "Address already in use").
        address = f"inproc://ingest-reader-{uuid.uuid4().hex}"
        self.inbox = zmqio.open_socket(ctx, zmq.PAIR, address, bind=True, rcvhwm=PIPE_HWM, linger=0)
        try:
            outbox = zmqio.open_socket(ctx, zmq.PAIR, address, bind=False, sndhwm=PIPE_HWM, linger=0)
            self._outbox = ReaderOutbox(outbox)
        except BaseException:
            self.inbox.close(0)
            raise
        self._thread = threading.Thread(
            target=read_camera, args=(self._outbox, source, stop, to_jpeg), name="camera-reader", daemon=True
        )
        self._next: ReaderEvent | None = None  # received, not taken yet

    def start(self) -> None:
        self._thread.start()

    # -- as a feed (feed.py) ----------------------------------------------------------------------

    def poll_on(self) -> zmq.Socket | None:
        return self.inbox if self._next is None else None

    def wait_s(self, now: float) -> float | None:
        return 0.0 if self._next is not None else None

    def fill(self, now: float, readable: bool) -> None:
        if readable and self._next is None:
            self._next = self.receive()

    def take(self) -> ReaderEvent | None:
        event, self._next = self._next, None
        return event

    def watch(self, now: float, on: bool) -> None:
        """Nothing to do: while the main thread does not take, the pipe fills and holds the thread back."""

    def receive(self) -> ReaderEvent:
        """The next event (the caller has seen ``inbox`` readable). The JPEG is copied once, out of ZeroMQ
        (as bytes: cheaper than a zero-copy Frame copied afterwards)."""
        return decode(zmqio.recv_parts(self.inbox, copy=True))

    def interrupt(self) -> None:
        """Make the reader let go of the camera now: stop, and unblock a read in progress."""
        self.stop.set()
        self.source.interrupt()

    def close(self) -> None:
        """Stop the thread and close both ends of the PAIR (call ``interrupt()`` first).

        A read in progress was interrupted; a connect in progress may not be, so the
        reader may still be in it: it is left behind, and its socket is closed for it, as
        the ZeroMQ context (which delivers what lingers) cannot end while it is open.
        """
        self.inbox.close(0)
        if self._thread.is_alive():
            self._thread.join(JOIN_WAIT)
            if self._thread.is_alive():
                log.info("the camera has not answered yet: leaving that connection attempt behind")
        self._outbox.close()

    def __enter__(self) -> CameraReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.interrupt()
        self.close()
