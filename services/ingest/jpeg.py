"""Is this part a JPEG, and how large is it? Checked before a frame is sent on.

Only the header is read (Pillow's ``Image.open`` is lazy: it parses the markers up to
the frame header and decodes no pixels), so checking costs microseconds per frame.
"""

from __future__ import annotations

import io

from PIL import Image

SOI = b"\xff\xd8"  # start of image
EOI = b"\xff\xd9"  # end of image
# Some cameras pad a frame after its end-of-image marker.
_PADDING = b"\r\n\t \x00"


class CorruptJpeg(ValueError):
    """A part that is not a complete, readable JPEG."""


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG, or CorruptJpeg saying what is wrong with it."""
    if len(data) < 4 or not data.startswith(SOI):
        raise CorruptJpeg(f"not a JPEG: no start-of-image marker ({len(data)} bytes, starts {data[:4].hex()})")
    if not data.rstrip(_PADDING).endswith(EOI):
        raise CorruptJpeg(f"incomplete JPEG: no end-of-image marker ({len(data)} bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError is an OSError; Pillow raises SyntaxError for a bad marker.
        raise CorruptJpeg(f"unreadable JPEG header: {exc}") from None
    if width <= 0 or height <= 0:
        raise CorruptJpeg(f"JPEG header gives an empty image ({width}x{height})")
    return width, height
