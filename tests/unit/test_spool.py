"""The spool: append, replay in order, commit, delete; a cut-short tail; one owner at a time."""

import msgpack
import numpy as np
import pytest

from encoders.services.recorder.rows import from_spool, to_spool
from encoders.shared.spool import Spool, SpoolLocked
from encoders.shared.storage.frames import FrameRow


def rec(i):
    return {"n": i, "payload": bytes([i % 256]) * 10}


def replay_all(spool, batch=3):
    out: list[int] = []
    while spool.pending:
        records, end = spool.read_batch(batch)
        out.extend(r["n"] for r in records)
        spool.commit(end, len(records))
    return out


def test_nothing_on_disk_until_something_is_appended(tmp_path):
    spool = Spool(tmp_path / "s.msgpack")
    assert not spool.pending
    assert spool.read_batch(5) == ([], 0)
    assert not (tmp_path / "s.msgpack").exists()


def test_replays_in_append_order_and_deletes_once_all_committed(tmp_path):
    path = tmp_path / "s.msgpack"
    spool = Spool(path)
    spool.append(rec(i) for i in range(4))
    spool.append([rec(4)])
    records, end = spool.read_batch(3)
    assert [r["n"] for r in records] == [0, 1, 2]
    spool.commit(end, 3)
    # Appended during the replay: queued behind what is left.
    spool.append(rec(i) for i in range(5, 8))
    assert path.exists()
    assert replay_all(spool) == [3, 4, 5, 6, 7]
    assert not path.exists() and not spool.pending
    assert spool.appended == 8 and spool.committed == 8


def test_uncommitted_records_are_read_again(tmp_path):
    spool = Spool(tmp_path / "s.msgpack")
    spool.append(rec(i) for i in range(3))
    first, _ = spool.read_batch(2)
    again, _ = spool.read_batch(2)  # not committed (the database went away again)
    assert [r["n"] for r in first] == [r["n"] for r in again] == [0, 1]


def test_a_truncated_tail_is_cut_off_and_appending_goes_on(tmp_path):
    path = tmp_path / "s.msgpack"
    whole = b"".join(msgpack.packb(rec(i)) for i in range(3))
    half = msgpack.packb(rec(3))[:7]
    path.write_bytes(whole + half)  # a crash in the middle of the fourth write
    spool = Spool(path)
    assert spool.discarded_bytes == len(half)
    assert path.stat().st_size == len(whole)
    spool.append([rec(9)])
    assert replay_all(spool) == [0, 1, 2, 9]


def test_damage_in_the_middle_keeps_what_came_before(tmp_path):
    path = tmp_path / "s.msgpack"
    path.write_bytes(msgpack.packb(rec(0)) + b"\xc1" + msgpack.packb(rec(1)))  # 0xc1 is never valid msgpack
    spool = Spool(path)
    assert replay_all(spool) == [0]


def test_one_process_at_a_time(tmp_path):
    path = tmp_path / "s.msgpack"
    live = Spool(path)
    live.append([rec(0)])
    with pytest.raises(SpoolLocked):
        Spool(path)
    live.close()  # released, file kept: an earlier run's leftover
    later = Spool(path)
    assert replay_all(later) == [0]


def test_frame_rows_survive_the_spool(tmp_path):
    vec = np.linspace(-1, 1, 512, dtype=np.float32)
    rows = [
        FrameRow(7, "cam0", 0, 1700000000.25, None, None, vec, "snapshots/frame_000000.jpg", "w1"),
        FrameRow(7, "cam0", 1, 1700000000.5, 0.75, 0.25, vec[::-1].copy(), None, "w2"),
    ]
    spool = Spool(tmp_path / "s.msgpack")
    spool.append(to_spool(r) for r in rows)
    records, _ = spool.read_batch(10)
    back = [from_spool(r) for r in records]
    for a, b in zip(rows, back, strict=False):
        assert a._replace(embedding=b.embedding) == b  # every other field equal
        np.testing.assert_array_equal(a.embedding, b.embedding)
        assert b.embedding.dtype == np.float32


def test_from_spool_rejects_what_is_not_a_row():
    with pytest.raises(ValueError):
        from_spool({"n": 1})
    with pytest.raises(ValueError):
        from_spool(5)
