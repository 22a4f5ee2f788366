"""What comes from outside, fed anything (issue #13): the MJPEG splitter and the HTTP header it
reads its boundary from, the JPEG header check, a spool file on disk and the rows in it.

Property-based (hypothesis): a few seconds' worth in ``make test``, far more in ``make fuzz``.
Each asserts what a user relies on: no exception but the one the caller handles, memory held
within its bound, and well-formed input read back exactly.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path

import msgpack
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from encoders.services.ingest.mjpeg import MAX_HEADER_BYTES, MjpegSplitter, boundary_from_content_type
from encoders.services.recorder.rows import to_spool
from encoders.services.recorder.writer import decode_spooled
from encoders.shared.jpeg import CorruptJpeg, jpeg_size
from encoders.shared.spool import Spool
from encoders.shared.storage.frames import FrameRow

from .message_strategies import msgpack_values

MAX_PART = 4096  # a small cap, so that the fuzzer reaches it


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at these points (as a socket might deliver it)."""
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# Bytes that look like parts of a multipart stream, in any order: the fuzzer builds near misses.
PIECES = st.sampled_from(
    [b"--FRAME", b"--FRAME--", b"\r\n", b"\n", b"Content-Length: ", b"Content-Length: -1", b"99999999",
     b"Content-Type: image/jpeg", b"\xff\xd8", b"\xff\xd9", b"----FRAME", b"--FRAMEWORK", b"-", b"\x00" * 100]
)  # fmt: skip
STREAM_BYTES = st.lists(st.one_of(PIECES, st.binary(max_size=300)), max_size=60).map(b"".join)


@given(
    data=STREAM_BYTES,
    points=st.lists(st.integers(0, 20_000), max_size=20),
    boundary=st.sampled_from([None, "FRAME", "--FRAME", "x"]),
)
def test_the_splitter_takes_any_bytes_split_anywhere_within_its_bounds(data, points, boundary):
    splitter = MjpegSplitter(boundary, max_part_bytes=MAX_PART)
    parts = []
    for chunk in cut(data, points):
        parts += splitter.feed(chunk)
        # What it holds stays within one part, its headers and a boundary line, however it is fed.
        assert len(splitter._buf) <= MAX_PART + MAX_HEADER_BYTES + 2 * len(chunk) + 512
    splitter.finish()
    assert all(len(p) <= MAX_PART for p in parts)
    assert splitter.parts == len(parts) and splitter.bytes_in == len(data)


JPEG_LIKE = st.binary(min_size=1, max_size=500).map(lambda b: b"\xff\xd8" + b.replace(b"--FRAME", b"") + b"\xff\xd9")


@given(
    jpegs=st.lists(JPEG_LIKE, min_size=1, max_size=8),
    points=st.lists(st.integers(0, 10_000), max_size=30),
    sized=st.booleans(),
    nl=st.sampled_from([b"\r\n", b"\n"]),
)
def test_a_well_formed_stream_split_anywhere_gives_back_every_part_exactly(jpegs, points, sized, nl):
    body = b"".join(
        b"--FRAME" + nl + (b"Content-Length: %d" % len(j) + nl if sized else b"") + nl + j + nl for j in jpegs
    )
    splitter = MjpegSplitter("FRAME")
    parts = [p for chunk in cut(body + b"--FRAME--" + nl, points) for p in splitter.feed(chunk)]
    assert parts == jpegs and splitter.ended and (splitter.truncated, splitter.oversized) == (0, 0)


@given(st.text(max_size=300))
def test_the_boundary_of_any_content_type_header_is_a_short_string_or_none(value):
    boundary = boundary_from_content_type(value)
    assert boundary is None or (isinstance(boundary, str) and boundary == boundary.strip() and boundary)


@given(st.one_of(st.binary(max_size=2000), st.binary(max_size=2000).map(lambda b: b"\xff\xd8" + b + b"\xff\xd9")))
def test_a_jpeg_header_is_read_or_refused_with_the_reason(data):
    try:
        width, height = jpeg_size(data)
    except CorruptJpeg as exc:
        assert str(exc)
    else:
        assert 0 < width <= 65535 and 0 < height <= 65535


def row(seq: int) -> FrameRow:
    return FrameRow(1, "cam0", seq, 1000.0 + seq, 0.9, 0.1, np.ones(4, np.float32), None, "w0")


@given(junk=st.binary(max_size=2000), valid=st.integers(0, 5))
def test_a_spool_file_with_anything_after_its_records_opens_keeps_them_and_takes_more(junk, valid):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spool.msgpack"
        good = [to_spool(row(i)) for i in range(valid)]
        path.write_bytes(b"".join(msgpack.packb(r, use_bin_type=True) for r in good) + junk)
        spool = Spool(path)  # a damaged or cut-short tail is cut off, never an exception
        try:
            records, _ = spool.read_batch(10_000)
            assert records[:valid] == good  # what was written whole is read back
            spool.append([to_spool(row(99))])
            again, _ = spool.read_batch(10_000)
            assert again[-1] == to_spool(row(99)) and again[:valid] == good
        finally:
            spool.close()


FIELDS = list(FrameRow._fields)
ROWISH = st.dictionaries(st.sampled_from(FIELDS), msgpack_values, max_size=len(FIELDS))


@given(st.lists(st.one_of(msgpack_values, ROWISH, ROWISH.map(lambda d: {**to_spool(row(0)), **d})), max_size=5))
def test_spooled_rows_that_do_not_read_as_rows_are_set_aside_never_raised(records):
    rows = decode_spooled(records, Path("spool.msgpack"))
    for r in rows:
        assert isinstance(r, FrameRow) and isinstance(r.seq, int) and math.isfinite(r.t_capture)


def test_regressions_found_by_the_fuzzer_are_refused_as_rows():
    """`make fuzz` found these: an infinite number raised OverflowError out of the replay, and a
    NaN time was stored. Each is now set aside (quarantined) as not a row."""
    good = to_spool(row(0))
    for bad in ({"run_id": math.inf}, {"seq": 2.0**70}, {"t_capture": math.nan}, {"keyframe": None}, {"stream": 7}):
        assert decode_spooled([{**good, **bad}], Path("spool.msgpack")) == [], bad
    assert decode_spooled([good], Path("spool.msgpack"))[0].seq == 0
