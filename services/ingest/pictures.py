"""What a camera source gives: a JPEG as the camera sent it, or a decoded picture (to the reader thread).

The wire carries JPEGs (``Pictures``, to the worker), so every source ends in a ``JpegFrame``. An MJPEG camera's
parts already are JPEGs (http_source.py); a video source (av_source.py) decodes H.264 or H.265
and gives a ``Picture``, which ``to_jpeg`` compresses here, in the reader thread, while the
source's own thread decodes the next frame. A GPU decoder added later yields its ``Picture``
(or its own ``JpegFrame``, compressed on the GPU) through the same interface: nothing after the
reader changes, nor the wire.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class JpegFrame:
    jpeg: bytes
    width: int
    height: int
    t_arrival: float  # the capture time sent on: time.time() when it arrived, or the stream's own (video)


@dataclass(frozen=True)
class Picture:
    """A decoded frame, not yet a JPEG. ``frame`` is an ``av.VideoFrame`` (any pixel format)."""

    frame: Any
    width: int
    height: int
    t_capture: float  # time.time() scale: the stream's timestamp anchored to this machine's clock


SourceItem = JpegFrame | Picture


def to_jpeg(picture: Picture, quality: int) -> JpegFrame:
    """Compress a decoded picture for the wire: FFmpeg converts to RGB, Pillow's libjpeg-turbo encodes
    (the fastest pair measured: benchmarks/RESULTS.md, "Ingest"). Both let go of the GIL meanwhile."""
    rgb = picture.frame.to_ndarray(format="rgb24")
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=quality)
    return JpegFrame(buf.getvalue(), picture.width, picture.height, picture.t_capture)


class JpegEncoder:
    """The reader's step from a source's item to what goes on the wire; a JPEG over ``max_bytes`` is
    dropped and counted ``oversized`` (as an MJPEG camera's part is)."""

    def __init__(self, quality: int, max_bytes: int, counters: dict[str, int]) -> None:
        self.quality, self.max_bytes, self.counters = quality, max_bytes, counters

    def __call__(self, item: SourceItem) -> JpegFrame | None:
        if isinstance(item, JpegFrame):
            return item
        frame = to_jpeg(item, self.quality)
        if len(frame.jpeg) > self.max_bytes:
            self.counters["oversized"] = self.counters.get("oversized", 0) + 1
            return None
        return frame
