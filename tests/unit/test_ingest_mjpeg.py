"""The MJPEG splitter and the JPEG check, against streams as real camera servers send them."""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from encoders.services.ingest.mjpeg import MjpegSplitter, boundary_from_content_type
from encoders.shared.jpeg import EOI, SOI, CorruptJpeg, jpeg_size


def make_jpeg(width: int, height: int, seed: int) -> bytes:
    """A real JPEG with noisy content (so it holds every byte value, 0xFF and '-' included)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


JPEGS = [make_jpeg(24, 16, 1), make_jpeg(32, 24, 2), make_jpeg(16, 16, 3)]
SIZES = [(24, 16), (32, 24), (16, 16)]


def part(
    jpeg: bytes,
    *,
    delimiter: bytes = b"--FRAME",
    nl: bytes = b"\r\n",
    length: bool = True,
    type_name: bytes = b"Content-Type",
    length_name: bytes = b"Content-Length",
) -> bytes:
    headers = [type_name + b": image/jpeg"]
    if length:
        headers.append(length_name + b": " + str(len(jpeg)).encode())
    return delimiter + nl + nl.join(headers) + nl + nl + jpeg + nl


def stream(jpegs=JPEGS, *, preamble: bytes = b"", closing: bool = False, **kw) -> bytes:
    body = preamble + b"".join(part(j, **kw) for j in jpegs)
    if closing:
        body += kw.get("delimiter", b"--FRAME") + b"--" + kw.get("nl", b"\r\n")
    return body


def split(
    data: bytes, boundary: str | None = "FRAME", chunks: list[int] | None = None
) -> tuple[list[bytes], MjpegSplitter]:
    splitter = MjpegSplitter(boundary)
    out: list[bytes] = []
    if chunks is None:
        out += splitter.feed(data)
    else:
        pos = 0
        for size in chunks:
            out += splitter.feed(data[pos : pos + size])
            pos += size
        out += splitter.feed(data[pos:])
    splitter.finish()
    return out, splitter


# -- the boundary in the Content-Type header ----------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("multipart/x-mixed-replace; boundary=FRAME", "FRAME"),
        ("multipart/x-mixed-replace;boundary=--myboundary", "--myboundary"),
        ('multipart/x-mixed-replace; boundary="spaced boundary"', "spaced boundary"),
        ("MULTIPART/X-MIXED-REPLACE; BOUNDARY=Ab12", "Ab12"),
        ("multipart/x-mixed-replace; charset=utf-8; boundary=xyz", "xyz"),
        ("multipart/x-mixed-replace", None),
        ("image/jpeg", None),
        ("", None),
        (None, None),
    ],
)
def test_boundary_from_content_type(value, expected):
    assert boundary_from_content_type(value) == expected


# -- well-formed streams, split anywhere ----------------------------------------------------------


def test_parts_come_back_byte_for_byte_and_are_counted():
    parts, splitter = split(stream())
    assert parts == JPEGS
    assert [jpeg_size(p) for p in parts] == SIZES
    assert (splitter.parts, splitter.truncated, splitter.skipped_bytes) == (3, 0, 0)


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-content-length"])
@pytest.mark.parametrize("nl", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_every_split_offset_gives_the_same_parts(length, nl):
    data = stream(length=length, nl=nl)
    for offset in range(len(data) + 1):
        parts, splitter = split(data, chunks=[offset])
        # Without Content-Length the last part ends only at a boundary that never comes.
        assert parts == (JPEGS if length else JPEGS[:-1]), f"split at byte {offset}"
        assert splitter.truncated == (0 if length else 1)


@pytest.mark.parametrize("length", [True, False])
def test_byte_by_byte_and_random_chunks(length):
    data = stream(closing=True, length=length)
    parts, splitter = split(data, chunks=[1] * len(data))
    assert parts == JPEGS and splitter.ended and splitter.truncated == 0
    rng = random.Random(7)
    for _ in range(50):
        sizes = [rng.randint(1, 300) for _ in range(len(data) // 20)]
        parts, splitter = split(data, chunks=sizes)
        assert parts == JPEGS, sizes
        assert splitter.truncated == 0


def test_lf_only_stream_without_content_length():
    parts, _ = split(stream(nl=b"\n", length=False, closing=True))
    assert parts == JPEGS


@pytest.mark.parametrize(
    "type_name, length_name",
    [
        (b"content-type", b"content-length"),
        (b"CONTENT-TYPE", b"CONTENT-LENGTH"),
        (b"Content-type", b"Content-length"),
        (b"cOnTeNt-TyPe", b"CoNtEnT-lEnGtH"),
    ],
)
def test_header_names_in_any_case(type_name, length_name):
    data = stream(type_name=type_name, length_name=length_name)
    parts, splitter = split(data, chunks=[5] * (len(data) // 5))
    assert parts == JPEGS and splitter.truncated == 0


def test_content_length_is_used_to_skip_the_body():
    # A body holding what looks like a boundary line is still one part when its length is given.
    tricky = JPEGS[0][:-2] + b"\r\n--FRAME\r\n" + b"\xff\xd9"
    parts, _ = split(stream([tricky, JPEGS[1]]))
    assert parts == [tricky, JPEGS[1]]


# -- boundary quirks ------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [True, False])
@pytest.mark.parametrize("delimiter", [b"--myboundary", b"----myboundary"])
def test_boundary_found_only_in_the_body(length, delimiter):
    data = stream(delimiter=delimiter, length=length, closing=True)
    for chunks in (None, [3] * (len(data) // 3)):
        parts, splitter = split(data, boundary=None, chunks=chunks)
        assert parts == JPEGS
        assert splitter.boundary == "myboundary"


@pytest.mark.parametrize(
    "declared, delimiter",
    [
        ("myboundary", b"--myboundary"),  # RFC 2046
        ("--myboundary", b"--myboundary"),  # declared with the dashes the body uses
        ("--myboundary", b"----myboundary"),  # declared with dashes, and the RFC's two more in the body
    ],
)
@pytest.mark.parametrize("length", [True, False])
def test_dash_prefix_quirks(declared, delimiter, length):
    parts, splitter = split(stream(delimiter=delimiter, length=length, closing=True), boundary=declared)
    assert parts == JPEGS and splitter.truncated == 0


def test_a_word_that_starts_like_the_boundary_is_not_a_boundary():
    jpeg = JPEGS[0][:-2] + b"\n--FRAMEWORK\r\n" + b"\xff\xd9"
    parts, _ = split(stream([jpeg, JPEGS[1]], length=False, closing=True))
    assert parts == [jpeg, JPEGS[1]]


def test_part_without_headers():
    data = b"--FRAME\r\n" + JPEGS[0] + b"\r\n--FRAME\r\n\r\n" + JPEGS[1] + b"\r\n--FRAME--\r\n"
    parts, _ = split(data, chunks=[7] * (len(data) // 7))
    assert parts == JPEGS[:2]


def test_closing_boundary_ends_the_stream():
    data = stream(closing=True) + b"epilogue that is ignored " + stream()
    parts, splitter = split(data)
    assert parts == JPEGS
    assert splitter.ended and splitter.skipped_bytes > 0


# -- garbage, truncation, corruption ----------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["FRAME", None], ids=["declared", "found-in-body"])
def test_preamble_before_the_first_boundary_is_skipped(boundary):
    preamble = (
        b"HTTP junk a proxy left\r\n-- not a boundary line\r\nx--FRAME is not at a line start\r\n\x00\xff\xd8\r\n"
    )
    data = stream(preamble=preamble, length=False, closing=True)
    for chunks in (None, [1] * len(data)):
        parts, splitter = split(data, boundary=boundary, chunks=chunks)
        assert parts == JPEGS and splitter.boundary == "FRAME"
        assert splitter.skipped_bytes > len(preamble) // 2


@pytest.mark.parametrize("length", [True, False])
def test_stream_that_stops_mid_part(length):
    data = stream(length=length)
    cut = len(data) - len(JPEGS[-1]) // 2
    parts, splitter = split(data[:cut])
    assert parts == JPEGS[:2]
    assert splitter.truncated == 1


def test_stream_that_stops_after_a_complete_sized_part_loses_nothing():
    parts, splitter = split(stream())
    assert parts == JPEGS and splitter.truncated == 0
    parts, splitter = split(stream() + b"--FRAME\r\n")  # a boundary, then nothing: no part begun
    assert parts == JPEGS and splitter.truncated == 0


def test_stream_that_stops_in_the_headers():
    parts, splitter = split(stream() + b"--FRAME\r\nContent-Type: ima")
    assert parts == JPEGS and splitter.truncated == 1


def test_wrong_content_length_gives_a_corrupt_part_then_resynchronises():
    bad = part(JPEGS[0]).replace(str(len(JPEGS[0])).encode(), str(len(JPEGS[0]) - 100).encode(), 1)
    data = bad + part(JPEGS[1]) + part(JPEGS[2])
    parts, splitter = split(data)
    assert parts[1:] == JPEGS[1:] and splitter.parts == 3
    with pytest.raises(CorruptJpeg, match="end-of-image"):
        jpeg_size(parts[0])


def test_oversized_part_is_dropped_and_counted():
    big = make_jpeg(256, 256, 9)
    splitter = MjpegSplitter("FRAME", max_part_bytes=len(big) - 1)
    out = splitter.feed(stream([JPEGS[0], big, JPEGS[1]], length=False, closing=True))
    assert out == [JPEGS[0], JPEGS[1]] and splitter.oversized == 1
    splitter = MjpegSplitter("FRAME", max_part_bytes=len(big) - 1)
    out = splitter.feed(stream([JPEGS[0], big, JPEGS[1]], closing=True))
    assert out == [JPEGS[0], JPEGS[1]] and splitter.oversized == 1


def test_large_part_in_small_reads():
    big = make_jpeg(800, 600, 4)  # ~1.4 MB of noise
    data = stream([big, JPEGS[0]], length=False, closing=True)
    parts, _ = split(data, chunks=[1460] * (len(data) // 1460))
    assert parts == [big, JPEGS[0]]


CORRUPT = {
    "not a jpeg": b"<html>oops</html>",
    "no end marker": JPEGS[0][: len(JPEGS[0]) // 2],
    "garbage between markers": b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9",
    "empty": b"",
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_part_is_rejected_and_the_stream_goes_on(name):
    """What the reader does: every part is checked; corrupt ones are counted, never passed on."""
    data = stream([JPEGS[0], CORRUPT[name], JPEGS[1]], length=False, closing=True)
    splitter = MjpegSplitter("FRAME")
    good, corrupt = [], 0
    for i in range(0, len(data), 64):
        for p in splitter.feed(data[i : i + 64]):
            try:
                good.append((p, jpeg_size(p)))
            except CorruptJpeg:
                corrupt += 1
    assert good == [(JPEGS[0], SIZES[0]), (JPEGS[1], SIZES[1])]
    assert corrupt == 1 and splitter.parts == 3


def test_jpeg_size_reads_only_the_header():
    # Pixel data cut short but the end marker present: the header is fine, so the size is known
    # (a decoder would choke on this; ingest publishes it and the encoder reports it as skipped).
    jpeg = make_jpeg(64, 48, 5)
    assert jpeg_size(jpeg[: len(jpeg) // 2] + b"\xff\xd9") == (64, 48)
    assert jpeg_size(jpeg + b"\r\n\x00\x00") == (64, 48)  # padding after the end marker


def pillow_kinds() -> list[tuple[str, bytes]]:
    """JPEGs of every kind Pillow writes: baseline, progressive, optimised tables, 4:4:4 and 4:2:0,
    greyscale, CMYK, with EXIF and ICC data before the frame header, restart markers, odd sizes."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    big = Image.fromarray(rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010F] = "Raspberry Pi"
    kinds: dict[str, tuple[Image.Image, dict[str, Any]]] = {
        "baseline": (rgb, {}),
        "progressive": (rgb, {"progressive": True}),
        "optimised": (rgb, {"optimize": True}),
        "4:4:4": (rgb, {"subsampling": 0}),
        "greyscale": (rgb.convert("L"), {}),
        "cmyk": (rgb.convert("CMYK"), {}),
        "exif": (rgb, {"exif": exif.tobytes()}),
        "icc": (rgb, {"icc_profile": b"\0" * 3000}),
        "restart markers": (rgb, {"restart_marker_blocks": 1}),
        "1080p": (big, {"quality": 70}),
        "1x1": (Image.new("RGB", (1, 1)), {}),
    }
    out = []
    for name, (img, options) in kinds.items():
        buf = io.BytesIO()
        img.save(buf, "JPEG", **options)
        out.append((name, buf.getvalue()))
    return out


@pytest.mark.parametrize(("name", "jpeg"), pillow_kinds(), ids=[name for name, _ in pillow_kinds()])
def test_jpeg_size_agrees_with_pillow(name, jpeg):
    with Image.open(io.BytesIO(jpeg)) as img:
        assert jpeg_size(jpeg) == img.size, name


@given(st.binary(max_size=300), st.integers(0, 400))
@settings(max_examples=500, deadline=None)
def test_jpeg_size_of_any_bytes_is_a_size_or_corrupt(junk, cut):
    """Whatever a camera sends between the markers: a size, or CorruptJpeg; never another error."""
    jpeg = make_jpeg(16, 8, 1)
    for data in (SOI + junk + EOI, jpeg[:cut] + junk + EOI, jpeg[: max(4, cut)] + EOI):
        try:
            width, height = jpeg_size(data)
        except CorruptJpeg:
            continue
        assert width > 0 and height > 0
