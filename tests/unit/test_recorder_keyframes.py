"""Keyframe segments, which rows keep thumbnails (the worker makes them: test_encoder_thumbnails),
the new row fields and the migrations list, without a database."""

import numpy as np
import pytest

from encoders.services.recorder.keyframes import Segmenter
from encoders.services.recorder.rows import from_spool, to_spool
from encoders.services.recorder.thumbnails import wanted
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


def test_a_resumed_segmenter_goes_on_from_the_last_stored_keyframe():
    seg = Segmenter(max_drift=0.05, max_s=100.0)
    seg.resume(7, 7.0, 3 * turn(0.0))  # the stream's last keyframe, as its row says
    assert seg.assign(8, 8.0, turn(0.1)) == (False, 7)
    assert seg.assign(9, 9.0, turn(0.5)) == (True, 9)


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
