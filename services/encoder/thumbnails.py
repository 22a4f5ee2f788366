"""The small JPEG a worker sends with each embedding, so that a stored row has a picture of its frame.

Why the worker makes it: it holds the frame anyway, and the embedding then carries its own
picture through the core to the recorder (and search results), without anyone keeping or
sending the full frame again.

Made from the frame's JPEG bytes with Pillow's draft mode: libjpeg decodes at 1/2, 1/4 or
1/8 scale straight away (the DCT does the shrinking), so a 640x480 frame costs little more
than its 160x120 thumbnail (about 0.6-0.9 ms of a core). On the worker's decode threads
when it has several (Pillow releases the GIL), so that thumbnails are made while the model
runs. A thumbnail never fails a frame: one that cannot be made is sent empty, and counted.
"""

from __future__ import annotations

import io
import logging
import math
from concurrent.futures import Executor, Future

from PIL import Image

log = logging.getLogger("encoders.encoder")


def make_thumbnail(jpeg: bytes, size: int, quality: int) -> bytes:
    """A JPEG whose longest side is at most ``size``. ValueError if the frame does not decode."""
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
        raise ValueError(f"no thumbnail: {exc or type(exc).__name__}") from None


class Thumbnails:
    """Thumbnails started on a thread pool (or made at once without one), and collected, never failing.

    ``size`` 0: none are made, and embeddings go without.
    """

    def __init__(self, size: int, quality: int, pool: Executor | None = None) -> None:
        self.size, self.quality, self.pool = size, quality, pool
        self.made = 0
        self.failed = 0

    def start(self, jpeg: bytes) -> Future[bytes] | None:
        """Start making one; None when thumbnails are off."""
        if not self.size:
            return None
        if self.pool is not None:
            return self.pool.submit(make_thumbnail, jpeg, self.size, self.quality)
        done: Future[bytes] = Future()
        try:
            done.set_result(make_thumbnail(jpeg, self.size, self.quality))
        except ValueError as exc:
            done.set_exception(exc)
        return done

    def result(self, pending: Future[bytes] | None, what: str) -> bytes:
        """The thumbnail started, or b"" (none wanted, or it could not be made: logged once, then counted)."""
        if pending is None:
            return b""
        try:
            thumbnail = pending.result()
        except Exception as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("%s: sent without a thumbnail (%s); further ones are only counted", what, exc)
            return b""
        self.made += 1
        return thumbnail
