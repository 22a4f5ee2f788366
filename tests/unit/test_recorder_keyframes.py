"""Keyframe segments, thumbnails, the new row fields and the migrations list, without a database."""

import io
import threading
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from encoders.services.recorder.keyframes import Segmenter
from encoders.services.recorder.rows import from_spool, to_spool
from encoders.services.recorder.thumbnails import ThumbnailPipeline, make_thumbnail, wanted
from encoders.shared.storage import schema
from encoders.shared.storage.frames import FrameRow, scene_change_values


def turn(angle):
    return np.array([np.cos(angle), np.sin(angle), 0.0], dtype=np.float32)


def test_a_segment_lasts_while_frames_stay_near_its_keyframe():
    seg = Segmenter(max_drift=0.05, max_s=100.0)
    # cos distance from the keyframe at angle 0: 1 - cos(a). 0.05 is reached at a = 0.3176 rad.
    angles = [0.0, 0.1, 0.2, 0.31, 0.32, 0.4, 0.5]
    got = [seg.assign(seq, float(seq), turn(a)) for seq, a in enumerate(angles)]
    # 0.32 rad is 0.0508 from the keyframe: a new segment; 0.4 and 0.5 are near 0.32 (1 - cos(0.18) = 0.016).
    assert got == [(True, 0), (False, 0), (False, 0), (False, 0), (True, 4), (False, 4), (False, 4)]


def test_a_segment_lasts_at_most_max_s_and_a_scene_change_starts_one():
    seg = Segmenter(max_drift=1.0, max_s=2.0)
    v = turn(0.0)
    out = [seg.assign(seq, t, v) for seq, t in enumerate([0.0, 1.0, 1.99, 2.0, 3.0, 4.5])]
    assert out == [(True, 0), (False, 0), (False, 0), (True, 3), (False, 3), (True, 5)]
    assert seg.assign(6, 4.6, v, scene_change=True) == (True, 6)


def test_vectors_need_not_be_normalised():
    seg = Segmenter(max_drift=0.01, max_s=10.0)
    assert seg.assign(0, 0.0, 5 * turn(0.0)) == (True, 0)
    assert seg.assign(1, 0.1, 0.2 * turn(0.0)) == (False, 0)


def jpeg(width, height, colour=(200, 30, 30)):
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_thumbnail_keeps_the_aspect_within_the_size():
    thumb = Image.open(io.BytesIO(make_thumbnail(jpeg(640, 480), 160, 70)))
    assert thumb.format == "JPEG" and thumb.size == (160, 120)
    pixel = thumb.getpixel((80, 60))
    assert isinstance(pixel, tuple)  # an RGB picture's pixel
    assert all(abs(a - b) < 12 for a, b in zip(pixel, (200, 30, 30), strict=False))
    small = Image.open(io.BytesIO(make_thumbnail(jpeg(100, 50), 160)))
    assert small.size == (100, 50)  # never enlarged


def test_thumbnail_of_a_corrupt_frame_is_a_value_error():
    with pytest.raises(ValueError, match="does not decode"):
        make_thumbnail(b"\xff\xd8 not a jpeg", 160)


def test_thumbnails_made_on_threads_keep_the_rows_in_order():
    rows = [FrameRow(1, "cam0", seq, 1.0 + seq, None, None, np.ones(4, np.float32), None, "w") for seq in range(40)]
    big, small = jpeg(1920, 1080), jpeg(64, 48)
    # A slow thumbnail first, fast ones after it, rows with no frame, and frames that do not decode.
    frames = [
        big if seq % 10 == 0 else None if seq % 7 == 3 else b"not a jpeg" if seq == 5 else small for seq in range(40)
    ]
    out: list[FrameRow] = []
    threads_used: set[str] = set()
    counters: Counter[str] = Counter()

    def sink(row):
        threads_used.add(threading.current_thread().name)
        out.append(row)

    pipeline = ThumbnailPipeline(3, 32, 70, sink, counters, max_waiting=8)
    for row, frame in zip(rows, frames, strict=False):
        pipeline.add(row, frame)
        assert pipeline.waiting <= 9  # at most max_waiting (+ the one just added) wait: memory stays bounded
    pipeline.close()
    assert [r.seq for r in out] == list(range(40))
    assert threads_used == {threading.current_thread().name}  # rows are handed on by the caller's thread
    for row, frame in zip(out, frames, strict=False):
        if frame is None or frame == b"not a jpeg":
            assert row.thumbnail is None
        else:
            assert row.thumbnail is not None
            assert Image.open(io.BytesIO(row.thumbnail)).size[0] == 32
    made = sum(f is not None and f != b"not a jpeg" for f in frames)
    assert made == 34 and counters == {"thumbnails": made, "thumbnails_bad_frames": 1}


def test_rows_without_thumbnails_are_handed_on_at_once_and_others_when_ready():
    out: list[FrameRow] = []
    pipeline = ThumbnailPipeline(1, 32, 70, out.append, Counter())
    pipeline.add(FrameRow(1, "cam0", 0, 1.0, None, None, np.ones(4, np.float32), None, "w"), None)
    assert [r.seq for r in out] == [0]
    pipeline.add(FrameRow(1, "cam0", 1, 2.0, None, None, np.ones(4, np.float32), None, "w"), jpeg(640, 480))
    for _ in range(200):
        pipeline.release()
        if len(out) == 2:
            break
        threading.Event().wait(0.01)
    assert [r.seq for r in out] == [0, 1] and out[1].thumbnail is not None
    pipeline.close()


def test_which_frames_get_thumbnails():
    assert wanted("all", False) and wanted("all", True)
    assert wanted("keyframes", True) and not wanted("keyframes", False)
    assert not wanted("none", True)


def test_spool_round_trip_with_the_new_fields_and_an_old_spooled_row():
    vec = np.arange(4, dtype=np.float32)
    row = FrameRow(
        1,
        "cam0",
        7,
        10.5,
        0.9,
        0.1,
        vec,
        None,
        "w",
        False,
        5,
        b"\xff\xd8thumb",
        True,
        0.02,
        0.01,
        "snapshots/scene_000007.jpg",
    )
    back = from_spool(to_spool(row))
    assert back._replace(embedding=row.embedding) == row  # every other field equal
    np.testing.assert_array_equal(back.embedding, vec)
    # A spool written before keyframes and thumbnails existed: each row its own keyframe.
    old = {k: v for k, v in to_spool(row).items() if k in FrameRow._fields[:9]}
    legacy = from_spool(old)
    assert (legacy.keyframe, legacy.keyframe_seq, legacy.thumbnail, legacy.scene_change) == (True, None, None, False)
    with pytest.raises(ValueError):
        from_spool({**to_spool(row), "unknown": 1})
    with pytest.raises(ValueError):
        from_spool({**to_spool(row), "thumbnail": 5})


def test_scene_change_values():
    row = FrameRow(
        3,
        "cam1",
        9,
        1700000000.0,
        0.5,
        0.5,
        np.zeros(2, np.float32),
        None,
        "w",
        True,
        9,
        None,
        True,
        0.01,
        0.002,
        "cam1/snapshots/scene_000009.jpg",
    )
    run_id, stream, seq, t, drift, mean, std, snap = scene_change_values(row)
    assert (run_id, stream, seq, drift, mean, std, snap) == (
        3,
        "cam1",
        9,
        0.5,
        0.01,
        0.002,
        "cam1/snapshots/scene_000009.jpg",
    )
    assert t.timestamp() == 1700000000.0


def test_migrations_are_numbered_from_one_without_gaps_and_idempotent_statements():
    versions = [m.version for m in schema.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1)) and versions[-1] == schema.LATEST_VERSION
    for m in schema.MIGRATIONS:
        assert m.description
        for statement in m.statements + m.frames_statements:
            head = " ".join(statement.split()[:6]).upper()
            # Each can run again on a database that has it already.
            assert (
                "IF NOT EXISTS" in statement.upper()
                or "IF EXISTS" in statement.upper()
                or head.startswith(("UPDATE", "DO ", "ALTER TABLE FRAMES ALTER COLUMN"))
            ), statement


def test_new_frames_table_has_the_keyframe_index_unless_vectors_are_too_long():
    steps = "\n".join(schema.frames_steps(512))
    assert "vector(512)" in steps and "USING hnsw" in steps and "WHERE keyframe" in steps
    assert "SET STORAGE PLAIN" in steps
    assert f"WITH (m = 16, ef_construction = {schema.HNSW_EF_CONSTRUCTION})" in steps
    assert "USING hnsw" not in "\n".join(schema.frames_steps(schema.HNSW_MAX_DIM + 1))
