"""Is this part a JPEG, and how large is it? Checked by the ingest before a frame is sent on, and
by a worker that decodes none (ENCODERS_NONE_DECODE=0, services/encoder/embedder.py).

Only the header is read, and no pixel decoded: the markers are walked from the start of the
image to the frame header (SOFn), whose fields give the size. Written by hand, not with
Pillow's ``Image.open``, which reads the same markers but makes Python objects of every
segment on the way (quantisation tables, APP data): about 24 us a frame, a fifth of the
camera reader's time at full speed (issue #21), where this walk costs a few. tests/unit/
test_ingest_mjpeg.py checks it against Pillow on JPEGs of every kind Pillow writes.
"""

from __future__ import annotations

SOI = b"\xff\xd8"  # start of image
EOI = b"\xff\xd9"  # end of image
# Some cameras pad a frame after its end-of-image marker.
_PADDING = b"\r\n\t \x00"
# The frame headers, which hold the size: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length (TEM, RST0-7): skipped alone. SOS or EOI before a frame header: none comes.
_BARE = frozenset((0x01, *range(0xD0, 0xD8)))
_NO_HEADER_AFTER = frozenset((0xDA, 0xD9))


class CorruptJpeg(ValueError):
    """A part that is not a complete, readable JPEG."""


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG, or CorruptJpeg saying what is wrong with it."""
    if len(data) < 4 or not data.startswith(SOI):
        raise CorruptJpeg(f"not a JPEG: no start-of-image marker ({len(data)} bytes, starts {data[:4].hex()})")
    if not data.rstrip(_PADDING).endswith(EOI):
        raise CorruptJpeg(f"incomplete JPEG: no end-of-image marker ({len(data)} bytes)")
    width, height = _frame_size(data)
    if width <= 0 or height <= 0:
        raise CorruptJpeg(f"JPEG header gives an empty image ({width}x{height})")
    return width, height


def _frame_size(data: bytes) -> tuple[int, int]:
    """The frame header's (width, height): the marker segments walked from the start of the image."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise CorruptJpeg(f"unreadable JPEG header: no marker at byte {pos} ({data[pos : pos + 4].hex()})")
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        if marker in _BARE:
            pos += 2
            continue
        if marker in _NO_HEADER_AFTER:
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2:
            raise CorruptJpeg(f"unreadable JPEG header: a segment of length {length} at byte {pos}")
        if marker in _SOF:
            if length < 8 or pos + 9 > end:
                raise CorruptJpeg("unreadable JPEG header: its frame header is cut short")
            # length (2), precision (1), height (2), width (2)
            return (data[pos + 7] << 8) | data[pos + 8], (data[pos + 5] << 8) | data[pos + 6]
        pos += 2 + length
    raise CorruptJpeg("unreadable JPEG header: no frame header (SOF) before the image data")
