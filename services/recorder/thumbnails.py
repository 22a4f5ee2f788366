"""Small JPEG thumbnails of embedded frames, stored with their rows so a search hit has a picture.

Why in the database (a bytea column, kept out of line) rather than files in the run
folder: a thumbnail per frame at 30 frames/s is millions of tiny files a day; in the row
it travels the same way as the embedding (COPY, the spool while the database is away,
ON CONFLICT on replay), so it is never lost or orphaned, and a search run on another
machine gets the picture from the database without reaching the run folder.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from PIL import Image

from .rows import FrameRow

log = logging.getLogger(__name__)

CHOICES = ("all", "keyframes", "none")


def wanted(which: str, keyframe: bool) -> bool:
    """Whether a frame gets a thumbnail under the ``thumbnails`` setting."""
    return which == "all" or (which == "keyframes" and keyframe)


def make_thumbnail(jpeg: bytes, size: int, quality: int = 70) -> bytes:
    """A JPEG whose longest side is at most ``size``. ValueError if the frame does not decode.

    Pillow's draft mode has libjpeg decode at 1/2, 1/4 or 1/8 scale straight away (the
    DCT does the shrinking), so a 640x480 frame costs little more than its thumbnail.
    """
    try:
        source = Image.open(io.BytesIO(jpeg))
        if source.format == "JPEG":
            # The thumbnail's own size (not size x size): a 640x480 frame decodes at 1/4, 160x120.
            scale = size / max(source.size)
            source.draft("RGB", (math.ceil(source.size[0] * scale), math.ceil(source.size[1] * scale)))
        img = source.convert("RGB")
        img.thumbnail((size, size), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
        return out.getvalue()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise ValueError(f"frame does not decode: {exc or type(exc).__name__}") from None


def thumbnail_threads(setting: int) -> int:
    """The thumbnail_threads setting as a count: 0 is one per core, up to 8."""
    return setting or min(8, os.cpu_count() or 1)


class ThumbnailPipeline:
    """Rows whose thumbnails are made on a few threads, handed on in the order they came.

    Making a thumbnail costs about 0.8 ms of a core for a 640x480 frame: on the receive
    loop's thread that caps a recorder near 1,100 frames/s. Pillow releases the GIL while it
    decodes, resizes and encodes, so threads make them side by side. A row waits here until
    its thumbnail and every row before it are done; ``release`` hands on what is ready.
    """

    def __init__(
        self,
        threads: int,
        size: int,
        quality: int,
        sink: Callable[[FrameRow], None],
        counters: Counter,
        *,
        max_waiting: int = 256,
    ):
        self.size, self.quality = size, quality
        self.sink = sink
        self.counters = counters
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="thumbnails")
        self._waiting: deque[tuple[FrameRow, Future | None]] = deque()

    def add(self, row: FrameRow, jpeg: bytes | None) -> None:
        """A row, and the frame to make its thumbnail from (None: the row goes without one)."""
        if jpeg is None and not self._waiting:
            self.sink(row)  # nothing before it to wait for (recording without frames: every row)
            return
        future = None if jpeg is None else self._pool.submit(make_thumbnail, jpeg, self.size, self.quality)
        self._waiting.append((row, future))
        if len(self._waiting) > self.max_waiting:
            self._hand_on(keep=self.max_waiting // 2)  # the threads are behind: wait, memory stays bounded
        self.release()

    def release(self) -> None:
        """Hand on the rows at the front whose thumbnails are done."""
        while self._waiting and (self._waiting[0][1] is None or self._waiting[0][1].done()):
            self._hand_on_first()

    def close(self) -> None:
        """Every row handed on (waiting for the thumbnails still being made), then the threads stopped."""
        self._hand_on(keep=0)
        self._pool.shutdown()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _hand_on(self, *, keep: int) -> None:
        while len(self._waiting) > keep:
            self._hand_on_first()

    def _hand_on_first(self) -> None:
        row, future = self._waiting.popleft()
        self.sink(row if future is None else row._replace(thumbnail=self._result(row, future)))

    def _result(self, row: FrameRow, future: Future) -> bytes | None:
        try:
            thumb = future.result()
        except ValueError as exc:
            self.counters["thumbnails_bad_frames"] += 1
            if self.counters["thumbnails_bad_frames"] == 1:
                log.warning("%s seq %d: no thumbnail (%s); further ones are only counted", row.stream, row.seq, exc)
            return None
        self.counters["thumbnails"] += 1
        return thumb
