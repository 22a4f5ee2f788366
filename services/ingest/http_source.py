"""Read one camera's MJPEG stream over HTTP as JPEG frames, reconnecting when it drops.

httpx does the HTTP (connect and read timeouts, status, headers, chunked or plain
bodies); ``iter_raw()`` hands over the body as the socket delivers it, which the
splitter cuts into parts and ``jpeg_size`` checks before anything is sent on.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Generator, Iterator

import httpx

from encoders.shared.backoff import Backoff
from encoders.shared.complaints import Complaints
from encoders.shared.jpeg import CorruptJpeg, jpeg_size
from encoders.shared.masking import mask

from .errors import StreamError, UnusableStream
from .mjpeg import MAX_PART_BYTES, MjpegSplitter, boundary_from_content_type
from .pictures import JpegFrame

log = logging.getLogger("encoders.ingest")

BACKOFF_START = 0.5  # seconds before the first reconnection attempt; doubles up to reconnect_max (with jitter)
# Bytes of body without a multipart boundary after which the URL is not an MJPEG stream.
NOT_MJPEG_AFTER = 512 * 1024
REQUEST_HEADERS = {
    "Accept": "multipart/x-mixed-replace, image/jpeg;q=0.9, */*;q=0.1",
    # iter_raw() returns the body as sent: ask the server not to compress it.
    "Accept-Encoding": "identity",
    "User-Agent": "encoders-ingest",
}


__all__ = ["HttpMjpegSource", "JpegFrame", "StreamError", "check_url", "read_first_frame"]


def check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnusableStream(f"invalid stream URL {mask(url)!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UnusableStream(f"invalid stream URL {mask(url)!r}: expected http://host:port/path")


def describe_error(exc: Exception, connect_timeout: float, read_timeout: float) -> str:
    """An httpx exception as a reason a person understands."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no answer within {connect_timeout:g} s (connect timeout)"
    if isinstance(exc, httpx.ReadTimeout):
        return f"no data for {read_timeout:g} s (read timeout: the stream stalled)"
    if isinstance(exc, httpx.ConnectError):
        if "refused" in text.lower():
            return "connection refused (is the camera server running on that port?)"
        if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
            return f"unknown host ({text})"
        return f"cannot connect: {text}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server broke the connection: {text}"
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return f"connection lost: {text}"
    return f"{type(exc).__name__}: {text}"


class HttpMjpegSource:
    """JPEG frames from an MJPEG URL; ``frames()`` runs until stopped (or the end, without reconnect).

    ``counters`` (read by other threads for statistics; keys fixed at start): connects,
    reconnects, bytes, parts, corrupt, truncated, oversized, stalls (connections reopened
    because no complete part came for ``stall_after`` seconds, or no byte for
    ``read_timeout``). After ``frames()`` returns, ``end_reason`` says why, and
    ``ever_connected`` whether any connection succeeded.
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
        stop: threading.Event | None = None,
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
        self.reconnect_max = reconnect_max
        self.stop = stop if stop is not None else threading.Event()
        self.deadline = deadline  # time.monotonic() by which a frame must have arrived (--test)
        self.counters = dict.fromkeys(
            ("connects", "reconnects", "bytes", "parts", "corrupt", "truncated", "oversized", "stalls"), 0
        )
        self.complain = Complaints(log, "the stream's counters")
        self.end_reason = ""
        self.end_unusable = False  # the last reason was an UnusableStream
        self.last_corrupt = ""
        self.ever_connected = False
        self._response: httpx.Response | None = None

    @classmethod
    def from_config(cls, cfg, stop: threading.Event | None = None) -> HttpMjpegSource:
        return cls(
            cfg.stream,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            stall_after=cfg.stall_after,
            max_frame_bytes=cfg.max_frame_bytes,
            reconnect=cfg.reconnect,
            reconnect_max=cfg.reconnect_max,
            stop=stop,
        )

    def frames(self) -> Generator[JpegFrame, None, None]:
        timeout = httpx.Timeout(
            connect=self.connect_timeout, read=self.read_timeout, write=self.connect_timeout, pool=self.connect_timeout
        )
        backoff = Backoff(BACKOFF_START, self.reconnect_max)
        attempt = 0  # reconnection attempts since the last connection that delivered frames
        with httpx.Client(timeout=timeout, follow_redirects=True, headers=REQUEST_HEADERS) as client:
            while not self.stop.is_set():
                if attempt:
                    delay = backoff.next()
                    log.info("reconnecting to %s in %.1f s (attempt %d)", self.shown, delay, attempt)
                    if self.stop.wait(delay):
                        break
                delivered = False
                try:
                    for frame in self._connection(client, attempt):
                        if not delivered:
                            delivered, attempt = True, 0
                            backoff.reset()
                        yield frame
                    reason = "the server ended the stream"
                except StreamError as exc:
                    reason = str(exc)
                    self.end_unusable = isinstance(exc, UnusableStream)
                if self.stop.is_set():
                    reason = "stopped"
                    break
                self.end_reason = reason
                log.warning("stream %s: %s", self.shown, reason)
                if not self.reconnect:
                    log.info("not reconnecting (reconnect is off): the stream has ended")
                    return
                attempt += 1
        self.end_reason = self.end_reason if not self.stop.is_set() else "stopped"

    def interrupt(self) -> None:
        """Unblock a read in progress (called from another thread after setting ``stop``).

        Shutting the socket down makes a blocked recv() return at once, where waiting
        would take up to read_timeout. Best effort: the timeout still ends it otherwise.
        """
        resp = self._response
        if resp is None:
            return
        try:
            sock = resp.extensions["network_stream"].get_extra_info("socket")
            sock.shutdown(socket.SHUT_RDWR)
        except (KeyError, AttributeError, OSError):  # already closed, or a transport without a socket
            pass

    # -- one connection ------------------------------------------------------------------------

    def _connection(self, client: httpx.Client, attempt: int) -> Iterator[JpegFrame]:
        try:
            with client.stream("GET", self.url) as resp:
                self._response = resp
                try:
                    yield from self._read_body(resp, attempt)
                finally:
                    self._response = None
        except httpx.HTTPError as exc:
            if self.stop.is_set():
                return  # interrupt() broke the connection on purpose
            if isinstance(exc, httpx.ReadTimeout):
                self.counters["stalls"] += 1
            raise StreamError(describe_error(exc, self.connect_timeout, self.read_timeout)) from None

    def _read_body(self, resp: httpx.Response, attempt: int) -> Iterator[JpegFrame]:
        if resp.status_code != 200:
            error = UnusableStream if resp.status_code in (401, 403, 404, 410) else StreamError
            raise error(f"HTTP {resp.status_code} {resp.reason_phrase}".rstrip())
        ctype = resp.headers.get("content-type", "")
        counters = self.counters
        counters["connects"] += 1
        if self.ever_connected:
            counters["reconnects"] += 1
        self.ever_connected = True
        if attempt:
            log.info("reconnected to %s (attempt %d, %s)", self.shown, attempt, ctype or "no Content-Type")
        else:
            log.info("connected to %s (%s)", self.shown, ctype or "no Content-Type")
        splitter = MjpegSplitter(boundary_from_content_type(ctype), max_part_bytes=self.max_frame_bytes)
        base = {k: counters[k] for k in ("parts", "truncated", "oversized")}
        # A stream can stay connected and produce nothing: bytes trickling in (the read timeout
        # is per read, so it never fires) or one part that never ends. Whatever arrives, a
        # complete part must come every stall_after seconds.
        progress = time.monotonic()
        bytes_since = 0
        try:
            for chunk in resp.iter_raw():
                now = time.time()
                counters["bytes"] += len(chunk)
                bytes_since += len(chunk)
                parts = splitter.feed(chunk)
                if parts:
                    progress, bytes_since = time.monotonic(), 0
                elif time.monotonic() - progress > self.stall_after:
                    counters["stalls"] += 1
                    raise StreamError(
                        f"stalled: {bytes_since} bytes in {time.monotonic() - progress:.0f} s and no complete frame "
                        f"(ENCODERS_STALL_AFTER={self.stall_after:g})"
                    )
                for part in parts:
                    try:
                        width, height = jpeg_size(part)
                    except CorruptJpeg as exc:
                        self._corrupt(exc)
                        continue
                    yield JpegFrame(part, width, height, now)
                counters["parts"] = base["parts"] + splitter.parts
                if self.stop.is_set() or splitter.ended:
                    return
                if not splitter.synced and splitter.bytes_in > NOT_MJPEG_AFTER:
                    raise UnusableStream(_not_mjpeg(ctype, splitter))
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise StreamError(self._no_frame_in_time())
            splitter.finish()
            if not splitter.synced:
                raise UnusableStream(_not_mjpeg(ctype, splitter))
        finally:
            counters["parts"] = base["parts"] + splitter.parts
            counters["truncated"] = base["truncated"] + splitter.truncated
            counters["oversized"] = base["oversized"] + splitter.oversized

    def _corrupt(self, exc: CorruptJpeg) -> None:
        self.counters["corrupt"] += 1
        self.last_corrupt = str(exc)
        self.complain("corrupt", "skipped a corrupt frame: %s", exc)

    def _no_frame_in_time(self) -> str:
        reason = f"no valid JPEG within {self.connect_timeout + self.read_timeout:g} s"
        if self.counters["corrupt"]:
            reason += f" ({self.counters['corrupt']} corrupt part(s), last: {self.last_corrupt})"
        return reason


def _not_mjpeg(ctype: str, splitter: MjpegSplitter) -> str:
    return (
        f"not an MJPEG stream: Content-Type {ctype or 'missing'!r} and no multipart boundary "
        f"in the {splitter.bytes_in} bytes received"
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
    frames = source.frames()
    try:
        for frame in frames:
            return frame
    finally:
        frames.close()
    reason = source.end_reason or "the stream ended before a JPEG arrived"
    if source.counters["corrupt"]:
        reason += f" ({source.counters['corrupt']} corrupt part(s), last: {source.last_corrupt})"
    elif source.ever_connected and reason == "the server ended the stream":
        reason = "the server ended the stream before a complete JPEG arrived"
    raise (UnusableStream if source.end_unusable else StreamError)(reason)
