"""The Recorder without sockets or database: where each stream's files go, snapshots, rows."""

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from encoders.logging_utils import load_run_embeddings
from encoders.services.recorder.acks import AckTracker
from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.recorder import Recorder
from encoders.services.recorder.run import RecordedRun
from encoders.shared.messages import Ack, EndOfStream, Frame, MetricsRecord, NoPictures
from encoders.shared.storage.connection import Database


class Rows:
    """Stands in for the FrameWriter: keeps what it is given."""

    def __init__(self):
        self.rows, self.model = [], None
        self.events: list[tuple] = []

    def add(self, row):
        self.rows.append(row)

    def set_model(self, model, dim):
        self.model = (model, dim)

    def add_event(self, stream, seq, t, kind, value):
        self.events.append((stream, seq, kind, value))


def vec(seed, dim=8):
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def record(stream, seq, t, dim=8):
    sim = None if seq == 0 else 0.9
    return MetricsRecord(
        stream=stream,
        seq=seq,
        t_capture=t,
        t_encoded=t + 0.1,
        worker="w",
        model="ViT-B-32",
        similarity=sim,
        drift=None if sim is None else 0.1,
        counts={"embedded": seq + 1},
        vector=vec(seq, dim),
    )


def frame(stream, seq, t):
    return Frame(
        stream=stream, seq=seq, t_capture=t, width=4, height=4, jpeg=b"\xff\xd8%s-%d\xff\xd9" % (stream.encode(), seq)
    )


def answer(rec, missing=()):
    """Stands in for the core and the stream's ingest: the pictures the recorder asked for (its
    WantPictures, one per stream), each handed to it as the core hands it one; ``missing``: seqs no
    ingest has any more (they never come)."""
    asked = rec.wanted()
    for want in asked:
        for seq in want.seqs():
            if seq not in missing:
                rec.on_message(frame(want.stream, seq, 0.0))
    return asked


class RunsTable(Database):
    """Stands in for the database's runs table (no server: only what a run claims and updates)."""

    def __init__(self):
        pass

    def claim_run(self, name, started_at):
        return 1

    def update_run(self, run_id, **fields):
        pass


def make(tmp_path: Path, **kw):
    rows = Rows()
    kw = {"snapshot_interval": 1.0, "embedding_interval": 3, **kw}
    run = RecordedRun.claim(RunsTable(), runs_dir=tmp_path.parent, run_dir=tmp_path)
    return Recorder(run, rows, RecorderConfig(**kw)), rows


def finish(rec):
    rec.close_files()
    return rec.run.finish({}, rec.stream_summaries(Counter(r.stream for r in rec.rows.rows)))


def test_first_stream_in_the_run_folder_others_beside_it(tmp_path):
    rec, rows = make(tmp_path)
    for i in range(5):
        rec.on_message(record("cam0", i, 100 + i * 0.5))
        rec.on_message(record("cam1", i, 200 + i * 0.5))
    rec.on_message(EndOfStream("cam1", 4, {"published": 9, "embedded": 5, "dropped": 4}))
    top = finish(rec)
    assert rows.model == ("ViT-B-32", 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cam1",
        "config.json",
        "drift.csv",
        "embeddings",
        "snapshots",
        "summary.json",
    ]
    assert sorted(p.name for p in (tmp_path / "cam1").iterdir()) == [
        "config.json",
        "drift.csv",
        "embeddings",
        "snapshots",
        "summary.json",
    ]
    assert top["streams"]["cam0"]["records"] == 5 and top["streams"]["cam0"]["folder"] == "."
    assert top["streams"]["cam1"]["folder"] == "cam1"
    cam1 = json.loads((tmp_path / "cam1" / "summary.json").read_text())["streams"]["cam1"]
    assert cam1["stream"] == "cam1" and cam1["frames"]["published"] == 9 and cam1["ended"]
    assert rec.ended == {"cam1"}
    # No file mixes two streams.
    assert [r[1] for r in csv.reader((tmp_path / "drift.csv").open())][1:] == ["0", "1", "2", "3", "4"]
    emb, ts, _idx = load_run_embeddings(tmp_path, stream="cam1")
    assert list(ts) == [200 + i * 0.5 for i in range(5)]
    np.testing.assert_array_equal(emb[2], vec(2))
    assert sorted(p.name for p in (tmp_path / "embeddings").iterdir()) == ["batch_0000.npz", "batch_0001.npz"]
    with pytest.raises(ValueError, match="cam0, cam1"):
        load_run_embeddings(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"] == {"name": "ViT-B-32", "dim": 8}


def test_stream_dirs_puts_every_stream_in_its_folder(tmp_path):
    rec, rows = make(tmp_path, stream_dirs=True)
    for i in range(4):
        for cam in ("cam0", "cam1"):
            rec.on_message(record(cam, i, 10 + i))
    top = finish(rec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam0", "cam1", "config.json", "summary.json"]
    assert set(top["streams"]) == {"cam0", "cam1"}
    assert top["totals"]["records"] == 8 and top["totals"]["db_rows"] == 8
    assert top["totals"]["frames"]["embedded"] == 8
    for cam in ("cam0", "cam1"):
        _, _, idx = load_run_embeddings(tmp_path / cam)
        assert list(idx) == [0, 1, 2, 3]
        assert json.loads((tmp_path / cam / "config.json").read_text())["stream"] == cam
    assert len(rows.rows) == 8


def test_snapshots_every_interval_with_the_frame_bytes_unchanged(tmp_path):
    rec, rows = make(tmp_path, snapshot_interval=1.0)
    times = [100.0 + 0.25 * i for i in range(12)]  # 100.00 .. 102.75
    for seq, t in enumerate(times):
        rec.on_message(record("cam0", seq, t))
        answer(rec, missing={4})  # frame 4's picture never comes: its snapshot falls to frame 5
        if seq == 4:
            assert [r.seq for r in rows.rows] == [0, 1, 2, 3]  # its row waits for it...
        rec.expire(math.inf)  # ... until its wait is over (the next record comes later)
    finish(rec)
    snaps = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert snaps == ["frame_000000.jpg", "frame_000005.jpg", "frame_000009.jpg"]
    assert (tmp_path / "snapshots" / "frame_000005.jpg").read_bytes() == frame("cam0", 5, 0).jpeg
    assert [r.seq for r in rows.rows] == list(range(12))
    assert [r.seq for r in rows.rows if r.snapshot_path] == [0, 5, 9]
    assert rows.rows[5].snapshot_path == "snapshots/frame_000005.jpg"
    assert rows.rows[4].snapshot_path is None  # a row never names a file that is not there
    assert json.loads((tmp_path / "summary.json").read_text())["totals"]["snapshots"] == 3
    assert rec.counters["snapshots_missed"] == 1


def test_only_the_snapshots_due_are_asked_for_one_message_per_stream(tmp_path):
    rec, rows = make(tmp_path, snapshot_interval=1.0)
    for seq in range(6):  # 0.4 s apart: due at 0 (t 0.0) and 3 (t 1.2); 4 is a scene change
        r = record("cam0", seq, 0.4 * seq)
        r.scene_change = seq == 4
        rec.on_message(r)
        rec.on_message(record("cam1", seq, 0.4 * seq))
    asked = {w.stream: w.seqs() for w in rec.wanted()}
    assert asked == {"cam0": [0, 3, 4], "cam1": [0, 3]}
    assert rec.wanted() == []  # each asked once
    assert rows.rows == []  # every row waits behind the first one's picture, in seq order
    for stream, seq in [("cam0", 4), ("cam1", 0), ("cam0", 0)]:  # pictures come in any order
        rec.on_message(frame(stream, seq, 0.0))
    assert [(r.stream, r.seq) for r in rows.rows] == [("cam1", 0), ("cam1", 1), ("cam1", 2)] + [
        ("cam0", s) for s in range(3)
    ]
    rec.on_message(frame("cam0", 3, 0.0))
    rec.on_message(frame("cam0", 3, 0.0))  # again: nothing wants it
    rec.on_message(frame("cam0", 1, 0.0))  # never asked for
    assert rec.counters["pictures_unwanted"] == 2
    assert [r.seq for r in rows.rows if r.stream == "cam0"] == list(range(6))
    by_seq = {r.seq: r for r in rows.rows if r.stream == "cam0"}
    assert by_seq[3].snapshot_path == "snapshots/frame_000003.jpg" and by_seq[3].scene_snapshot_path is None
    assert by_seq[4].snapshot_path is None and by_seq[4].scene_snapshot_path == "snapshots/scene_000004.jpg"
    assert (tmp_path / "snapshots" / "scene_000004.jpg").read_bytes() == frame("cam0", 4, 0).jpeg
    finish(rec)  # cam1's 3 never came: given up at the end, its rows written without it
    assert [r.seq for r in rows.rows if r.stream == "cam1"] == list(range(6))
    assert rec.counters["snapshots_missed"] == 1


def test_pending_wants_are_bounded(tmp_path):
    rec, rows = make(tmp_path, snapshot_interval=0.0)  # every frame due
    for seq in range(70):
        rec.on_message(record("cam0", seq, float(seq)))
    (want,) = rec.wanted()
    assert want.seqs() == list(range(64))  # WANTS_MAX: past it a due snapshot is missed at once
    assert rec.counters["snapshots_missed"] == 6 and rec.waiting_pictures() == 64
    answer_all = [frame("cam0", seq, 0.0) for seq in range(64)]
    for f in answer_all:
        rec.on_message(f)
    assert [r.seq for r in rows.rows] == list(range(70)) and rec.waiting_pictures() == 0
    assert [r.seq for r in rows.rows if r.snapshot_path] == list(range(64))
    finish(rec)


def test_snapshot_paths_of_a_second_stream_are_relative_to_the_run(tmp_path):
    rec, rows = make(tmp_path, snapshot_interval=0.0)
    rec.on_message(record("cam0", 0, 1.0))
    rec.on_message(record("cam1", 0, 1.0))
    answer(rec)
    finish(rec)
    assert rows.rows[1].snapshot_path == "cam1/snapshots/frame_000000.jpg"
    assert (tmp_path / rows.rows[1].snapshot_path).read_bytes() == frame("cam1", 0, 1.0).jpeg


def test_bad_records_are_counted_and_written_nowhere(tmp_path):
    rec, rows = make(tmp_path)
    rec.on_message(record("cam0", 0, 1.0))
    rec.on_message(record("cam0", 1, 2.0, dim=16))  # another model's size
    nan = record("cam0", 2, 3.0)
    nan.vector = np.full(8, np.nan, np.float32)
    rec.on_message(nan)
    rec.on_message(record("../etc", 3, 4.0))
    rec.on_message(record("cam0", 4, 5.0))
    finish(rec)
    assert [r.seq for r in rows.rows] == [0, 4]
    assert rec.counters["wrong_dim"] == 1 and rec.counters["bad_vectors"] == 1 and rec.counters["bad_stream_names"] == 1
    assert not (tmp_path.parent / "etc").exists()
    assert [r[1] for r in csv.reader((tmp_path / "drift.csv").open())][1:] == ["0", "4"]


def test_records_that_cannot_be_stored_are_counted_not_stored_never_embedded(tmp_path):
    """Issue #22: summary.json said 158 embedded where 1 row was stored. What the core counted
    embedded but the recorder could not store is counted apart, and the counts still add up."""
    rec, rows = make(tmp_path)
    rec.on_message(record("cam0", 0, 1.0))
    rec.on_message(record("cam0", 1, 2.0, dim=16))  # another model's size
    nan = record("cam0", 2, 3.0)
    nan.vector = np.full(8, np.nan, np.float32)
    rec.on_message(nan)
    rec.on_message(record("cam0", 3, 4.0))
    rec.on_message(EndOfStream("cam0", 3, {"published": 4, "embedded": 4, "dropped": 0, "skipped": 0, "lost": 0}))
    top = finish(rec)
    frames = top["streams"]["cam0"]["frames"]
    assert len(rows.rows) == frames["embedded"] == 2 and frames["not_stored"] == 2
    assert frames["published"] == sum(frames[k] for k in ("embedded", "dropped", "skipped", "lost", "not_stored"))
    assert top["totals"]["frames"]["not_stored"] == 2


def test_a_run_with_no_records_still_leaves_the_layout(tmp_path):
    rec, _ = make(tmp_path)
    top = finish(rec)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "drift.csv",
        "embeddings",
        "snapshots",
        "summary.json",
    ]
    assert top["streams"] == {} and top["totals"]["records"] == 0 and top["totals"]["frames"]["embedded"] == 0
    assert (tmp_path / "drift.csv").read_bytes() == b"timestamp,frame,similarity,drift\n"


def test_a_record_sent_again_is_recorded_once(tmp_path):
    rec, rows = make(tmp_path)
    for seq in (0, 1, 2, 1, 2, 3):
        rec.on_message(record("cam0", seq, 10.0 + seq))
    finish(rec)
    assert [r.seq for r in rows.rows] == [0, 1, 2, 3]
    assert rec.counters["repeated_records"] == 2
    assert [r[1] for r in csv.reader((tmp_path / "drift.csv").open())][1:] == ["0", "1", "2", "3"]


@pytest.mark.parametrize("which", ["all", "keyframes", "none"])
def test_thumbnails_come_with_the_records_and_are_kept_as_set(tmp_path, which):
    rec, rows = make(tmp_path, thumbnails=which, keyframe_drift=2.0, keyframe_max_s=2.5)  # segments of 3 frames
    for seq in range(6):
        r = record("cam0", seq, float(seq))
        r.thumbnail = b"" if seq == 4 else b"\xff\xd8thumb-%d\xff\xd9" % seq  # the worker made none for 4
        rec.on_message(r)
    finish(rec)
    keyframes = [r.seq for r in rows.rows if r.keyframe]
    assert keyframes == [0, 3]
    kept = {r.seq: r.thumbnail for r in rows.rows if r.thumbnail is not None}
    wanted = {"all": [0, 1, 2, 3, 5], "keyframes": [0, 3], "none": []}[which]
    assert sorted(kept) == wanted and all(kept[s] == b"\xff\xd8thumb-%d\xff\xd9" % s for s in kept)
    assert rec.counters["thumbnails"] == len(wanted)
    assert rec.counters["thumbnails_missing"] == (1 if which == "all" else 0)


def test_records_owe_the_core_an_ack_once_durable_or_refused(tmp_path):
    acks = AckTracker()
    rows = Rows()
    run = RecordedRun.claim(RunsTable(), runs_dir=tmp_path.parent, run_dir=tmp_path)
    rec = Recorder(run, rows, RecorderConfig(), acks)
    rec.on_message(record("cam0", 0, 1.0))
    answer(rec)  # the first record is due a snapshot: its row waits for the picture
    rec.on_message(record("cam0", 1, 2.0, dim=16))  # refused: another model's size
    rec.on_message(record("cam0", 2, 3.0))
    rec.on_message(EndOfStream("cam0", 3, {"embedded": 2}))
    assert acks.take() == []  # nothing durable yet
    acks.durable("cam0", 0)
    assert acks.take() == [Ack("cam0", 1)]
    acks.durable("cam0", 2)
    assert acks.take() == [Ack("cam0", 3, ended=True)]
    rec.on_message(record("cam0", 2, 3.0))  # sent again after a break
    assert acks.take() == [Ack("cam0", 3, ended=True)] and [r.seq for r in rows.rows] == [0, 2]
    finish(rec)


def test_snapshots_missed_are_counted(tmp_path):
    rec, rows = make(tmp_path, snapshot_interval=1.0)
    for seq in range(4):  # the pictures of 0, 2 and 3 never come, and each was due (1 s apart, none taken since 1)
        rec.on_message(record("cam0", seq, float(seq)))
        answer(rec, missing={0, 2, 3})
        rec.expire(math.inf)
    finish(rec)
    assert rec.counters["snapshots_missed"] == 3
    assert [r.snapshot_path for r in rows.rows] == [None, "snapshots/frame_000001.jpg", None, None]


def test_pictures_said_gone_are_missed_at_once_and_the_rows_behind_them_go_on(tmp_path):
    rec, rows = make(tmp_path, snapshot_interval=1.0, snapshot_wait=3600.0)
    rec.on_message(record("cam0", 0, 0.0))  # due a snapshot: its row waits for the picture
    rec.on_message(record("cam0", 1, 0.5))  # not due, but behind it
    (asked,) = rec.wanted()
    assert asked.seqs() == [0] and rows.rows == []
    rec.on_message(NoPictures.of("cam0", [0, 7]))  # 7 was never asked for: nothing to miss
    assert [r.seq for r in rows.rows] == [0, 1] and rows.rows[0].snapshot_path is None  # no hour's wait
    assert (rec.counters["snapshots_missed"], rec.counters["pictures_gone"]) == (1, 1)
    rec.on_message(record("cam0", 2, 1.0))  # a periodic snapshot missed falls to the next frame
    answer(rec)
    assert rows.rows[-1].snapshot_path == "snapshots/frame_000002.jpg"
    finish(rec)


def test_a_stream_without_records_for_stream_down_after_is_told_down_once_and_stored(tmp_path):
    """Issue #15: stream_down, told live (MQTT, webhook) and kept in the events table."""
    import time

    rec, rows = make(tmp_path, stream_down_after=5.0)
    told: list = []
    rec.notify = told.append
    rec.on_message(record("cam0", 0, 100.0))
    rec.on_message(record("cam1", 0, 100.0))
    rec.on_message(EndOfStream("cam1", 0, {"published": 1, "embedded": 1}))
    now = time.monotonic()
    rec.check_streams(now + 1)
    assert rows.events == []
    rec.check_streams(now + 6)
    rec.check_streams(now + 7)  # once
    assert [(n.kind, n.stream, n.seq) for n in told if n.kind == "stream_down"] == [("stream_down", "cam0", 0)]
    assert [(s, q, k) for s, q, k, _ in rows.events] == [("cam0", 0, "stream_down")]  # cam1 ended: not down
    rec.on_message(record("cam0", 1, 120.0))  # back: it may go down again
    rec.check_streams(time.monotonic() + 6)
    assert len(rows.events) == 2
    finish(rec)
