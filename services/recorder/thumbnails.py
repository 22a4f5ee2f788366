"""Small JPEG thumbnails of embedded frames, stored with their rows so a search hit has a picture.

Why in the database (a bytea column, kept out of line) rather than files in the run
folder: a thumbnail per frame at 30 frames/s is millions of tiny files a day; in the row
it travels the same way as the embedding (COPY, the spool while the database is away,
ON CONFLICT on replay), so it is never lost or orphaned, and a search run on another
machine gets the picture from the database without reaching the run folder.
"""

from __future__ import annotations

import io
import math

from PIL import Image

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
        img = Image.open(io.BytesIO(jpeg))
        if img.format == "JPEG":
            # The thumbnail's own size (not size x size): a 640x480 frame decodes at 1/4, 160x120.
            scale = size / max(img.size)
            img.draft("RGB", (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
        img = img.convert("RGB")
        img.thumbnail((size, size), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
        return out.getvalue()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise ValueError(f"frame does not decode: {exc or type(exc).__name__}") from None
