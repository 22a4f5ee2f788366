"""Where a video source's packets come from: a container FFmpeg opens (RTSP, a file), or raw
H.264 read from a TCP socket by us. Each gives its packets with their arrival times, and a
decoder for them.

RTSP and files go through ``av.open`` with PyAV's own open and read timeouts (its interrupt
callback). Those are known not to fire in every case (PyAV#584, #1243, #1257), so the source's
watchdog (av_source.py) also watches every connection's progress and walks away from one that
stops moving. An ``av.open`` container is never closed from another thread: FFmpeg would free
what the blocked read uses.

Raw H.264 (``rpicam-vid --listen``) needs no demuxer: the socket is ours, with its own read
timeout, and FFmpeg's parser cuts the byte stream into access units (``CodecContext.parse``).
``interrupt()`` shuts the socket down, which any blocked read returns from at once.

Errors become one line each (``describe``), never FFmpeg's text with the URL in it (it holds
the password): an ``UnusableStream`` where only a change of settings helps.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, Protocol
from urllib.parse import urlsplit

import av
import av.error

from .errors import REFUSED, Stalled, StreamError, UnusableStream
from .urls import Kind, file_path

log = logging.getLogger("encoders.ingest")

CHUNK = 256 * 1024  # bytes read from a raw H.264 socket at once


class Input(Protocol):
    codec: str  # FFmpeg's name of the video codec: h264, hevc, mjpeg...
    decoder: Any  # av.VideoCodecContext
    description: str  # "h264 1920x1080 30 fps", for the log
    frame_time: float  # seconds between frames (a file's loop continues one frame after its end)
    time_base: Fraction | None  # of the stream's timestamps (a flushed frame may carry none of its own)
    bytes: int  # bytes read so far (raw H.264: from the socket; a container: its packets')

    def packets(self) -> Iterator[tuple[Any, float]]:
        """(av.Packet, arrival time.time()) until the stream ends; a last empty packet flushes."""
        ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


def open_input(kind: Kind, url: str, *, connect_timeout: float, read_timeout: float, transport: str) -> Input:
    """Connect (or open the file); StreamError or UnusableStream says why not."""
    if kind == "h264-tcp":
        return RawH264Input(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
    return ContainerInput(kind, url, connect_timeout=connect_timeout, read_timeout=read_timeout, transport=transport)


class ContainerInput:
    """RTSP or a file, demuxed by FFmpeg: the first video stream."""

    def __init__(self, kind: Kind, url: str, *, connect_timeout: float, read_timeout: float, transport: str) -> None:
        self.bytes = 0
        options = {}
        if kind == "rtsp":
            _resolve(url)
            options = {
                "rtsp_transport": transport,
                # FFmpeg's own socket timeout (microseconds), a backstop behind PyAV's open and read timeouts
                "timeout": str(int((connect_timeout + read_timeout + 1) * 1e6)),
                "allowed_media_types": "video",
            }
        name = file_path(url) if kind == "file" else url
        try:
            # The open timeout covers the connection and the first packets (find_stream_info).
            self.container = av.open(name, options=options, timeout=(connect_timeout + read_timeout, read_timeout))
        except (av.error.FFmpegError, OSError) as exc:
            raise describe(
                exc,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                opening=True if kind == "file" else "network",
            ) from None
        try:
            if not self.container.streams.video:
                raise UnusableStream("no video in the stream")
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = "AUTO"
            self.decoder = self.stream.codec_context
            self.time_base = self.stream.time_base
            self.codec = self.decoder.name
            rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
            self.frame_time = float(1 / rate)
            self.description = f"{self.codec} {self.decoder.width}x{self.decoder.height} {float(rate):g} fps"
        except BaseException:
            self.container.close()
            raise

    def packets(self) -> Iterator[tuple[Any, float]]:
        for packet in self.container.demux(self.stream):
            self.bytes += packet.size
            yield packet, time.time()

    def interrupt(self) -> None:
        """Nothing safe to do from another thread: PyAV's read timeout or the watchdog ends a blocked read."""

    def close(self) -> None:
        self.container.close()


class RawH264Input:
    """Raw H.264 (Annex B) over TCP, as ``rpicam-vid --listen -o tcp://0.0.0.0:8888`` serves it."""

    codec = "h264"

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(url)
        self.read_timeout = read_timeout
        self.bytes = 0
        self.frame_time = 1 / 30  # raw H.264 carries no rate: only used by a file's loop
        self.time_base: Fraction | None = None  # nor timestamps: capture times are arrival times
        try:
            self.sock = socket.create_connection((parts.hostname, parts.port), timeout=connect_timeout)
        except OSError as exc:
            raise describe(exc, connect_timeout=connect_timeout, read_timeout=read_timeout, opening="network") from None
        self.sock.settimeout(read_timeout)
        self.decoder = av.CodecContext.create("h264", "r")
        self.decoder.thread_type = "AUTO"
        self.description = "raw h264 over TCP"

    def packets(self) -> Iterator[tuple[Any, float]]:
        while True:
            try:
                chunk = self.sock.recv(CHUNK)
            except TimeoutError:
                raise Stalled.no_data(self.read_timeout) from None
            except OSError as exc:
                raise describe(exc, connect_timeout=0, read_timeout=self.read_timeout, opening=False) from None
            arrival = time.time()
            self.bytes += len(chunk)
            for packet in self.decoder.parse(chunk or None):  # b"" (the end): None flushes the parser
                yield packet, arrival
            if not chunk:
                yield av.Packet(), arrival  # an empty packet: the decoder's flush
                return

    def interrupt(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def _resolve(url: str) -> None:
    """An unknown host said as such (FFmpeg says only "Input/output error")."""
    host = urlsplit(url).hostname or ""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise StreamError(f"unknown host {host!r} ({exc.strerror})") from None


def describe(exc: BaseException, *, connect_timeout: float, read_timeout: float, opening: bool | str) -> StreamError:
    """An FFmpeg or socket error as one line a person understands (no URL in it: it may hold a password).

    ``opening``: False (reading), True (opening a file) or "network" (connecting to a camera)."""
    text = getattr(exc, "strerror", None) or type(exc).__name__
    if isinstance(exc, av.error.HTTPUnauthorizedError):
        return UnusableStream("the camera refused the credentials (401 Unauthorized): check the user and password")
    if isinstance(exc, av.error.HTTPForbiddenError):
        return UnusableStream("the camera refused access (403 Forbidden): check the user's rights")
    if isinstance(exc, av.error.HTTPNotFoundError):
        return UnusableStream("no such stream on the camera (404 Not Found): check the URL's path")
    if isinstance(exc, av.error.HTTPClientError):
        return UnusableStream(f"the camera refused the request ({text})")
    if isinstance(exc, av.error.ExitError | TimeoutError):
        if opening:
            return StreamError(f"no answer within {connect_timeout + read_timeout:g} s (connect timeout)")
        return Stalled.no_data(read_timeout)
    if isinstance(exc, ConnectionRefusedError):
        return StreamError(REFUSED)
    if isinstance(exc, FileNotFoundError):
        return UnusableStream("no such file")
    if isinstance(exc, av.error.InvalidDataError):
        if opening == "network":  # also what FFmpeg says when its own socket timeout fires
            return StreamError("no usable answer from the camera (invalid data, or none in time)")
        if opening:
            return UnusableStream("not a video stream FFmpeg can read (invalid data)")
        return StreamError("invalid data in the stream")
    if isinstance(exc, av.error.DecoderNotFoundError):
        return UnusableStream(f"no decoder for this stream's codec ({text})")
    if isinstance(exc, ConnectionError | av.error.EOFError):
        return StreamError(f"connection lost: {text}")
    if isinstance(exc, OSError | av.error.FFmpegError):
        return StreamError(f"cannot read the stream: {text}")
    return StreamError(f"{type(exc).__name__}: {text}")
