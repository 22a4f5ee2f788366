"""The bytes the web viewer writes: MJPEG parts, Server-Sent Events, and JSON that refuses NaN.

Pure functions, no server: the routes (routes.py) write what these return. Both JSON writers
refuse NaN (allow_nan=False): JSON.parse rejects it, so a NaN must fail here, loudly, not in
the browser.
"""

from __future__ import annotations

import json
from typing import Any

BOUNDARY = "frame"
PART_HEADERS = b"Content-Type: image/jpeg\r\n\r\n"
MJPEG_CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
MJPEG_START = f"--{BOUNDARY}\r\n".encode() + PART_HEADERS


def mjpeg_part(jpeg: bytes) -> bytes:
    """One frame of a multipart/x-mixed-replace stream (which starts with MJPEG_START).

    The frame is followed at once by the next part's boundary and headers: a browser shows a
    part only once the next one has begun, so this shows each frame now rather than when the
    next comes (with a paused camera, never). The next frame's length is not known yet, so
    parts carry no Content-Length; browsers, ffplay and OpenCV find the boundary instead.
    """
    return jpeg + f"\r\n--{BOUNDARY}\r\n".encode() + PART_HEADERS


def sse_event(name: str, data: Any) -> bytes:
    """One Server-Sent Event: its name and its data as compact JSON."""
    return f"event: {name}\ndata: {json.dumps(data, allow_nan=False, separators=(',', ':'))}\n\n".encode()


def json_dumps(obj: Any) -> str:
    """JSON for the /api/ answers (aiohttp's ``dumps``)."""
    return json.dumps(obj, allow_nan=False)
