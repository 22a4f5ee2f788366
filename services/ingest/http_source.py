"""An MJPEG camera over HTTP, read in the ingest's main thread: JPEG frames, reconnecting when it drops.

A ``HttpMjpegSource`` is a feed (feed.py): the main thread polls its socket with the core's
and takes the frames each read completes. Only connecting blocks (DNS, TCP, TLS, the camera's
answer): that runs in a short-lived thread (http_connect.py), which hands back the socket,
non-blocking, with the body's first bytes. The body is cut into parts by the splitter
(mjpeg.py) and each part's JPEG header checked (``jpeg_size``) before it is taken.

Why no reader thread: handing each frame from a thread to the main thread over a pipe cost
four times what reading it costs (0.048-0.052 against 0.011 CPU-ms a frame at 640x480, measured
side by side by benchmarks/bench_feed.py; benchmarks/RESULTS.md, issue #21).

Backpressure: the socket is read only while the ingest takes frames, one read (at most
``READ_BYTES``) at a time, and only once the frames of the last read are taken. While the
ingest holds the camera back (lossless, no credit), nothing is read: the kernel's buffers fill
and TCP backpressure reaches the camera. The read timeout and the stall clock do not run
meanwhile: the wait is the ingest's, not the camera's.

Decoded pictures (RTSP, H.264) come through a reader thread instead (reader.py): decoding is
work to be done beside the main thread, not a wait.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import deque

import h11

from encoders.shared.backoff import Backoff
from encoders.shared.complaints import Complaints
from encoders.shared.jpeg import CorruptJpeg, jpeg_size
from encoders.shared.masking import mask

from .errors import Stalled, StreamError, UnusableStream
from .feed import drive
from .http_connect import Opened, check_url, open_stream
from .mjpeg import MAX_PART_BYTES, MjpegSplitter, boundary_from_content_type
from .pictures import JpegFrame
from .reader import ReaderEnded, ReaderEvent

log = logging.getLogger("encoders.ingest")

BACKOFF_START = 0.5  # seconds before the first reconnection attempt; doubles up to reconnect_max (with jitter)
# Bytes of body without a multipart boundary after which the URL is not an MJPEG stream.
NOT_MJPEG_AFTER = 512 * 1024
# The most one read takes from the socket: about five 640x480 frames when the camera is ahead.
READ_BYTES = 256 * 1024
CONNECT_CHECK_S = 0.02  # while connecting, how often the main thread looks whether it is done

__all__ = ["HttpMjpegSource", "JpegFrame", "StreamError", "check_url", "read_first_frame"]

# The states of the camera's connection.
_IDLE, _CONNECTING, _READING, _WAITING, _DONE = "idle", "connecting", "reading", "waiting", "done"


class _Connecting:
    """One connection attempt in a thread of its own; ``result`` is set when it is over.

    A daemon thread, not an executor's: a camera that never answers is left behind at
    shutdown (its connect timeout ends it), where an executor would be joined at exit."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float) -> None:
        self.result: Opened | StreamError | None = None
        self.abandoned = False
        self._thread = threading.Thread(
            target=self._run, args=(url, connect_timeout, read_timeout), name="camera-connect", daemon=True
        )
        self._thread.start()

    def _run(self, url: str, connect_timeout: float, read_timeout: float) -> None:
        try:
            result: Opened | StreamError = open_stream(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
        except StreamError as exc:
            result = exc
        except Exception as exc:  # a bug, said as the reason rather than lost with the thread
            log.exception("connecting to the camera failed")
            result = StreamError(f"cannot connect: {type(exc).__name__}: {exc}")
        self.result = result
        if self.abandoned and isinstance(result, Opened):
            result.sock.close()  # the source stopped meanwhile: nobody will read it


class HttpMjpegSource:
    """JPEG frames from an MJPEG URL, as a feed (feed.py): ``start``, then ``fill`` and ``take`` each turn.

    ``counters`` (keys fixed at start): connects, reconnects, bytes, parts, corrupt, truncated,
    oversized, stalls (connections reopened because no complete part came for ``stall_after``
    seconds, or no byte for ``read_timeout``). Without reconnect, the end of the first connection
    is the feed's end (a ``ReaderEnded``); ``end_reason`` says why, ``ever_connected`` whether any
    connection succeeded.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        stall_after: float = 10.0,
        max_frame_bytes: int = MAX_PART_BYTES,
        reconnect: bool = True,
        reconnect_max: float = 10.0,
        deadline: float | None = None,
    ) -> None:
        check_url(url)
        self.url = url
        self.shown = mask(url)  # for logs: the password masked
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.stall_after = stall_after
        self.max_frame_bytes = max_frame_bytes
        self.reconnect = reconnect
        self.deadline = deadline  # time.monotonic() by which a frame must have arrived (--test)
        self.counters = dict.fromkeys(
            ("connects", "reconnects", "bytes", "parts", "corrupt", "truncated", "oversized", "stalls"), 0
        )
        self.complain = Complaints(log, "the stream's counters")
        self.end_reason = ""
        self.end_unusable = False  # the last reason was an UnusableStream
        self.last_corrupt = ""
        self.ever_connected = False
        self._backoff = Backoff(BACKOFF_START, reconnect_max)
        self._attempt = 0  # reconnection attempts since the last connection that delivered frames
        self._state = _IDLE
        self._events: deque[ReaderEvent] = deque()
        self._connecting: _Connecting | None = None
        self._retry_at = 0.0
        # The connection being read.
        self._sock: socket.socket | None = None
        self._dechunk: h11.Connection | None = None
        self._left: int | None = None  # body bytes still to come (Content-Length), None: until the close
        self._splitter = MjpegSplitter()
        self._ctype = ""
        self._last_byte = self._progress = 0.0
        self._bytes_since = 0  # bytes since the last complete part

    @classmethod
    def from_config(cls, cfg) -> HttpMjpegSource:
        return cls(
            cfg.stream,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            stall_after=cfg.stall_after,
            max_frame_bytes=cfg.max_frame_bytes,
            reconnect=cfg.reconnect,
            reconnect_max=cfg.reconnect_max,
        )

    # -- the feed -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._state is _IDLE:
            self._connect()

    def poll_on(self) -> socket.socket | None:
        """The socket, while a read is wanted (connected, and every frame read taken)."""
        return self._sock if self._state is _READING and not self._events else None

    def wait_s(self, now: float) -> float | None:
        """When the feed must be given a turn though its socket says nothing: frames to take, the
        connection thread to look at, a reconnection due, a timeout."""
        if self._events:
            return 0.0
        if self._state is _CONNECTING:
            return CONNECT_CHECK_S
        if self._state is _WAITING:
            return max(0.0, self._retry_at - now)
        if self._state is _READING:
            due = self._last_byte + self.read_timeout
            if self.deadline is not None:
                due = min(due, self.deadline)
            return max(0.0, due - now)
        return None

    def watch(self, now: float, on: bool) -> None:
        """The ingest takes frames again (``on``), or holds the camera back: the read timeout and the
        stall clock start again from now, since the time held back was not the camera's."""
        if on:
            self._last_byte = max(self._last_byte, now)
            self._progress = max(self._progress, now)

    def fill(self, now: float, readable: bool) -> None:
        """The feed's turn: its connection's progress, and one read if ``readable`` (its socket polled so)."""
        if self._state is _CONNECTING:
            self._connected(now)
        elif self._state is _WAITING and now >= self._retry_at:
            self._connect()
        elif self._state is _READING and not self._events:
            try:
                if readable:
                    self._read(now)
                self._check_time(now)
            except StreamError as exc:
                self._connection_ended(exc, now)

    def take(self) -> ReaderEvent | None:
        """The next frame read (or the end), or None: none until the next read."""
        return self._events.popleft() if self._events else None

    def interrupt(self) -> None:
        """Stop reading: the connection is closed; one in progress is left to its thread."""
        if self._connecting is not None:
            self._connecting.abandoned = True  # its thread closes what it opens from now on
            if isinstance(self._connecting.result, Opened):  # opened already: closed here
                self._connecting.result.sock.close()
            self._connecting = None
        self._close_connection()
        self._state = _DONE

    def close(self) -> None:
        self.interrupt()

    # -- connecting ------------------------------------------------------------------------------

    def _connect(self) -> None:
        self._state = _CONNECTING
        self._connecting = _Connecting(self.url, self.connect_timeout, self.read_timeout)

    def _connected(self, now: float) -> None:
        attempt = self._connecting
        if attempt is None or attempt.result is None:
            return
        self._connecting = None
        if isinstance(attempt.result, StreamError):
            self._connection_ended(attempt.result, now)
            return
        opened = attempt.result
        self._sock, self._dechunk, self._ctype = opened.sock, opened.dechunk, opened.content_type
        self._left = None if opened.length is None else opened.length - len(opened.body)
        self._state = _READING
        counters = self.counters
        counters["connects"] += 1
        if self.ever_connected:
            counters["reconnects"] += 1
        self.ever_connected = True
        ctype = self._ctype or "no Content-Type"
        if self._attempt:
            log.info("reconnected to %s (attempt %d, %s)", self.shown, self._attempt, ctype)
        else:
            log.info("connected to %s (%s)", self.shown, ctype)
        # A stream can stay connected and produce nothing: bytes trickling in (the read timeout
        # is per byte, so it never fires) or one part that never ends. Whatever arrives, a
        # complete part must come every stall_after seconds.
        self._splitter = MjpegSplitter(boundary_from_content_type(self._ctype), max_part_bytes=self.max_frame_bytes)
        self._last_byte = self._progress = now
        self._bytes_since = 0
        try:
            self._body(opened.body, now, time.time())
            if self._left == 0 or (self._dechunk is not None and self._dechunk.their_state is h11.DONE):
                self._end_of_body()
        except StreamError as exc:
            self._connection_ended(exc, now)

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, now: float) -> None:
        """One read of what the socket holds, into frames; StreamError when the connection ends."""
        assert self._sock is not None
        size = READ_BYTES if self._left is None else min(READ_BYTES, self._left)
        try:
            data = self._sock.recv(size)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError as exc:
            raise StreamError(f"connection lost: {exc}") from None
        if data and isinstance(self._sock, ssl.SSLSocket):
            data = self._more_records(data, size)
        if not data:
            if self._dechunk is not None or self._left:
                raise StreamError("the server broke the connection: it closed in the middle of the body")
            self._end_of_body()
        self._last_byte = now
        if self._dechunk is None:
            self._body(data, now, time.time())
            if self._left is not None:
                self._left -= len(data)
                if not self._left:
                    self._end_of_body()
            return
        self._dechunk.receive_data(data)
        while True:
            try:
                event = self._dechunk.next_event()
            except h11.RemoteProtocolError as exc:
                raise StreamError(f"the server broke the connection: {exc}") from None
            if isinstance(event, h11.Data):
                self._body(bytes(event.data), now, time.time())
            elif isinstance(event, h11.EndOfMessage):
                self._end_of_body()
            else:
                return

    def _more_records(self, data: bytes, size: int) -> bytes:
        """Over TLS a recv gives one record (16 KB at most): the others already there, up to ``size``, so
        that a read is as much of the stream as without TLS. The end of the connection or an error is
        left to the next read, after these bytes."""
        assert self._sock is not None
        chunks = [data]
        got = len(data)
        while got < size:
            try:
                more = self._sock.recv(size - got)
            except (BlockingIOError, OSError):  # ssl.SSLWantReadError is both
                break
            if not more:
                break
            chunks.append(more)
            got += len(more)
        return b"".join(chunks) if len(chunks) > 1 else data

    def _body(self, data: bytes, now: float, t_arrival: float) -> None:
        """Body bytes: the frames they complete queued to be taken (a corrupt part skipped, counted)."""
        if not data:
            return
        counters, splitter = self.counters, self._splitter
        counters["bytes"] += len(data)
        before = (splitter.parts, splitter.truncated, splitter.oversized)
        parts = splitter.feed(data)
        counters["parts"] += splitter.parts - before[0]
        counters["truncated"] += splitter.truncated - before[1]
        counters["oversized"] += splitter.oversized - before[2]
        if parts:
            self._progress, self._bytes_since = now, 0
        else:
            self._bytes_since += len(data)
        for part in parts:
            try:
                width, height = jpeg_size(part)
            except CorruptJpeg as exc:
                self._corrupt(exc)
                continue
            self._events.append(JpegFrame(part, width, height, t_arrival))
            if self._attempt:  # the first frame since connections failed: the next failure waits least
                self._attempt = 0
                self._backoff.reset()
        if splitter.ended:
            self._end_of_body()
        if not splitter.synced and splitter.bytes_in > NOT_MJPEG_AFTER:
            raise UnusableStream(self._not_mjpeg())

    def _check_time(self, now: float) -> None:
        if now - self._last_byte > self.read_timeout:
            raise Stalled.no_data(self.read_timeout)
        if self._bytes_since and now - self._progress > self.stall_after:  # bytes, no part (silence: read timeout)
            raise Stalled(
                f"stalled: {self._bytes_since} bytes in {now - self._progress:.0f} s and no complete frame "
                f"(ENCODERS_STALL_AFTER={self.stall_after:g})"
            )
        if self.deadline is not None and now > self.deadline:
            raise StreamError(self._no_frame_in_time())

    def _end_of_body(self) -> None:
        """The body has ended (the close, its length, its last chunk or the closing boundary)."""
        before = self._splitter.truncated
        self._splitter.finish()
        self.counters["truncated"] += self._splitter.truncated - before
        if not self._splitter.synced:
            raise UnusableStream(self._not_mjpeg())
        raise StreamError("the server ended the stream")

    def _connection_ended(self, exc: StreamError, now: float) -> None:
        """The connection (or the attempt) is over: said, then tried again after a wait, or the end."""
        self._close_connection()
        if isinstance(exc, Stalled):
            self.counters["stalls"] += 1
        reason = str(exc)
        self.end_reason, self.end_unusable = reason, isinstance(exc, UnusableStream)
        log.warning("stream %s: %s", self.shown, reason)
        if not self.reconnect:
            log.info("not reconnecting (reconnect is off): the stream has ended")
            self._events.append(ReaderEnded("ended" if self.ever_connected else "failed", reason))
            self._state = _DONE
            return
        self._attempt += 1
        delay = self._backoff.next()
        log.info("reconnecting to %s in %.1f s (attempt %d)", self.shown, delay, self._attempt)
        self._state, self._retry_at = _WAITING, now + delay

    def _close_connection(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._dechunk = None

    def _corrupt(self, exc: CorruptJpeg) -> None:
        self.counters["corrupt"] += 1
        self.last_corrupt = str(exc)
        self.complain("corrupt", "skipped a corrupt frame: %s", exc)

    def _no_frame_in_time(self) -> str:
        reason = f"no valid JPEG within {self.connect_timeout + self.read_timeout:g} s"
        if self.counters["corrupt"]:
            reason += f" ({self.counters['corrupt']} corrupt part(s), last: {self.last_corrupt})"
        return reason

    def _not_mjpeg(self) -> str:
        return (
            f"not an MJPEG stream: Content-Type {self._ctype or 'missing'!r} and no multipart boundary "
            f"in the {self._splitter.bytes_in} bytes received"
        )


def read_first_frame(url: str, *, connect_timeout: float, read_timeout: float) -> JpegFrame:
    """Connect once and return the first valid JPEG, or StreamError saying why not (for --test)."""
    source = HttpMjpegSource(
        url,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        reconnect=False,
        deadline=time.monotonic() + connect_timeout + read_timeout,
    )
    try:
        for event in drive(source):
            if isinstance(event, JpegFrame):
                return event
    finally:
        source.close()
    reason = source.end_reason or "the stream ended before a JPEG arrived"
    if source.counters["corrupt"] and "corrupt part" not in reason:
        reason += f" ({source.counters['corrupt']} corrupt part(s), last: {source.last_corrupt})"
    elif source.ever_connected and reason == "the server ended the stream":
        reason = "the server ended the stream before a complete JPEG arrived"
    raise (UnusableStream if source.end_unusable else StreamError)(reason)
