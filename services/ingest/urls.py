"""What kind of camera a ``--stream`` names, checked before anything connects.

One setting names every kind, by its scheme: ``http(s)://`` an MJPEG camera (http_source.py,
unchanged), ``rtsp(s)://`` an IP camera, ``tcp://HOST:PORT`` raw H.264 (``rpicam-vid --listen
-o tcp://0.0.0.0:8888`` on a Pi), anything else a video file (a path, or ``file://``). The
last three are decoded with PyAV (av_source.py). A URL that cannot name a camera is an
``UnusableStream`` said in one line, with the password masked.
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import unquote, urlsplit

from encoders.shared.masking import mask

from .errors import UnusableStream

Kind = Literal["mjpeg", "rtsp", "h264-tcp", "file"]
EXPECTED = "expected http(s)://... (MJPEG), rtsp(s)://..., tcp://HOST:PORT (raw H.264) or a video file"


def kind_of(url: str) -> Kind:
    """The kind of camera ``url`` names; UnusableStream if it names none."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError if not a number
    except ValueError as exc:
        raise UnusableStream(f"invalid stream URL {mask(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return "mjpeg"
    if scheme in ("rtsp", "rtsps"):
        if not parts.hostname:
            raise UnusableStream(f"invalid stream URL {mask(url)!r}: expected rtsp://[user:password@]host[:port]/path")
        return "rtsp"
    if scheme == "tcp":
        if not parts.hostname or port is None:
            raise UnusableStream(f"invalid stream URL {mask(url)!r}: expected tcp://HOST:PORT (raw H.264)")
        return "h264-tcp"
    if scheme in ("", "file"):
        path = file_path(url)
        if not os.path.isfile(path):
            raise UnusableStream(f"no such video file: {path!r} ({EXPECTED})")
        return "file"
    raise UnusableStream(f"invalid stream URL {mask(url)!r}: {EXPECTED}")


def file_path(url: str) -> str:
    """The path a file URL (file:///a/b.mp4) or a plain path names."""
    return unquote(urlsplit(url).path) if url.lower().startswith("file:") else url
