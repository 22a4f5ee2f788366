"""The small JPEG a worker sends with each embedding, so that a stored row has a picture of its frame.

Why the worker makes it: it holds the frame anyway, and the embedding then carries its own
picture through the core to the recorder (and search results), without anyone keeping or
sending the full frame again.

Made from the frame the worker has decoded for the model anyway (preprocess.py: at the smallest
DCT scale the model allows, 320x240 for a 640x480 frame), in the same decode thread, so that a
frame is decoded once: a second decode for the thumbnail cost 0.64 ms a 640x480 frame and 2.8
ms a 1920x1080 one, against 0.44 and 0.66 to shrink and compress the picture already there
(benchmarks/RESULTS.md). On the worker's decode threads when it has several (Pillow releases
the GIL). A thumbnail never fails a frame: one that cannot be made is sent empty, and counted.
``make_thumbnail`` makes one from a JPEG's bytes, for what has no decoded frame at hand.
"""

from __future__ import annotations

import io
import logging
import math

from PIL import Image

log = logging.getLogger("encoders.encoder")


def make_thumbnail(jpeg: bytes, size: int, quality: int) -> bytes:
    """A JPEG whose longest side is at most ``size``, from a frame's bytes. ValueError if it does not decode."""
    try:
        source = Image.open(io.BytesIO(jpeg))
        if source.format == "JPEG":
            # The thumbnail's own size (not size x size): a 640x480 frame decodes at 1/4, 160x120.
            scale = size / max(source.size)
            source.draft("RGB", (math.ceil(source.size[0] * scale), math.ceil(source.size[1] * scale)))
        img = source.convert("RGB")
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise ValueError(f"no thumbnail: {exc or type(exc).__name__}") from None
    return thumbnail_of(img, size, quality)


def thumbnail_of(picture: Image.Image, size: int, quality: int) -> bytes:
    """A JPEG whose longest side is at most ``size``, from a decoded frame (left as it is). ValueError if
    it cannot be made."""
    try:
        img = picture.copy()
        img.thumbnail((size, size), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        img.convert("RGB").save(out, "JPEG", quality=quality)
        return out.getvalue()
    except Exception as exc:  # Pillow's errors, whatever they are: a thumbnail never fails a frame
        raise ValueError(f"no thumbnail: {exc or type(exc).__name__}") from None


class Thumbnails:
    """Thumbnails made from decoded frames, and collected, never failing.

    ``size`` 0: none are made, and embeddings go without.
    """

    def __init__(self, size: int, quality: int) -> None:
        self.size, self.quality = size, quality
        self.made = 0
        self.failed = 0

    def of(self, picture: Image.Image) -> bytes | ValueError | None:
        """Make one now, in this thread (a decode thread: load_batch's ``each``), from the frame decoded
        for the model: its bytes, or why it could not be made; None when thumbnails are off. ``result``
        reads it, in the worker's thread, where it is counted."""
        if not self.size:
            return None
        try:
            return thumbnail_of(picture, self.size, self.quality)
        except ValueError as exc:
            return exc

    def result(self, made: bytes | ValueError | None, what: str) -> bytes:
        """The thumbnail made, or b"" (none wanted, or it could not be made: logged once, then counted)."""
        if made is None:
            return b""
        if isinstance(made, ValueError):
            self.failed += 1
            if self.failed == 1:
                log.warning("%s: sent without a thumbnail (%s); further ones are only counted", what, made)
            return b""
        self.made += 1
        return made
