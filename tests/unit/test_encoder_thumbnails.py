"""The thumbnail a worker sends with each embedding: small, its frame's own picture, never a failure."""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from encoders.services.encoder.thumbnails import Thumbnails, make_thumbnail


def jpeg(size, color=(200, 30, 30), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("frame", "thumb"),
    [((640, 480), (160, 120)), ((480, 640), (120, 160)), ((1920, 1080), (160, 90)), ((100, 50), (100, 50))],
)
def test_the_longest_side_is_at_most_the_size_and_the_shape_is_kept(frame, thumb):
    out = Image.open(io.BytesIO(make_thumbnail(jpeg(frame), 160, 70)))
    assert out.format == "JPEG" and out.size == thumb
    pixels = np.asarray(out.convert("RGB"))  # its own picture: red
    assert pixels[..., 0].min() > 150 and pixels[..., 1:].max() < 80


def test_a_frame_that_does_not_decode_is_a_value_error():
    with pytest.raises(ValueError, match="no thumbnail"):
        make_thumbnail(b"\xff\xd8 not a jpeg", 160, 70)


def test_a_picture_in_another_format_still_gets_one():
    assert Image.open(io.BytesIO(make_thumbnail(jpeg((320, 240), fmt="PNG"), 64, 70))).size == (64, 48)


@pytest.mark.parametrize("threads", [0, 2])
def test_thumbnails_never_fail_a_frame_they_are_empty_and_counted(threads, caplog):
    pool = ThreadPoolExecutor(threads) if threads else None
    try:
        thumbnails = Thumbnails(64, 70, pool)
        good, bad, worse = (thumbnails.start(j) for j in (jpeg((320, 240)), b"junk", b"more junk"))
        with caplog.at_level(logging.WARNING):
            assert Image.open(io.BytesIO(thumbnails.result(good, "cam0 #0"))).size == (64, 48)
            assert thumbnails.result(bad, "cam0 #1") == b"" and thumbnails.result(worse, "cam0 #2") == b""
        assert (thumbnails.made, thumbnails.failed) == (1, 2)
        assert caplog.text.count("without a thumbnail") == 1  # said once, then counted
    finally:
        if pool is not None:
            pool.shutdown()


def test_size_zero_is_none():
    thumbnails = Thumbnails(0, 70)
    assert thumbnails.start(jpeg((64, 48))) is None and thumbnails.result(None, "x") == b""
