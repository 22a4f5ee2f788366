"""The thumbnail a worker sends with each embedding: small, its frame's own picture, never a failure."""

from __future__ import annotations

import io
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from encoders.services.encoder.preprocess import Preprocessor, load_batch
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


def test_thumbnails_never_fail_a_frame_they_are_empty_and_counted(caplog):
    thumbnails = Thumbnails(64, 70)
    broken = Image.new("RGB", (320, 240))
    broken.close()  # a picture Pillow can no longer read: its thumbnail fails
    good, bad, worse = (thumbnails.of(p) for p in (Image.open(io.BytesIO(jpeg((320, 240)))), broken, broken))
    with caplog.at_level(logging.WARNING):
        assert Image.open(io.BytesIO(thumbnails.result(good, "cam0 #0"))).size == (64, 48)
        assert thumbnails.result(bad, "cam0 #1") == b"" and thumbnails.result(worse, "cam0 #2") == b""
    assert (thumbnails.made, thumbnails.failed) == (1, 2)
    assert caplog.text.count("without a thumbnail") == 1  # said once, then counted


def test_size_zero_is_none():
    thumbnails = Thumbnails(0, 70)
    assert thumbnails.of(Image.new("RGB", (64, 48))) is None and thumbnails.result(None, "x") == b""


@pytest.mark.parametrize("threads", [0, 2])
def test_a_batch_s_thumbnails_come_from_the_frames_it_decoded_for_the_model(threads):
    """One decode a frame (load_batch's ``each``): the thumbnails are the frames' own pictures, in
    order, made on the decode threads, and no more like the JPEG than a thumbnail decoded from it."""
    frames = [jpeg((640, 480), color) for color in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    pre = Preprocessor(size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    thumbnails = Thumbnails(160, 70)
    made_in: set[str] = set()

    def each(picture: Image.Image):
        made_in.add(threading.current_thread().name)
        assert picture.size == (320, 240)  # the model's decode, at half scale: not a second one
        return thumbnails.of(picture)

    pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads else None
    try:
        arrays, ok, bad, made = load_batch(pre, [*frames[:2], b"junk", frames[2]], pool, each)
    finally:
        if pool is not None:
            pool.shutdown()
    assert ok == [0, 1, 3] and [p for p, _ in bad] == [2] and len(arrays) == len(made) == 3
    assert all(name.startswith("decode") for name in made_in) if threads else made_in == {"MainThread"}
    for thumbnail, original in zip(made, [*frames[:2], frames[2]], strict=True):
        got = np.asarray(Image.open(io.BytesIO(thumbnails.result(thumbnail, "cam0"))).convert("RGB"), np.int16)
        want = np.asarray(Image.open(io.BytesIO(make_thumbnail(original, 160, 70))).convert("RGB"), np.int16)
        assert got.shape == want.shape == (120, 160, 3) and np.abs(got - want).mean() < 3
    assert thumbnails.made == 3 and thumbnails.failed == 0
