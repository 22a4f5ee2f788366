"""A run resumed after its recorder died, without a database: its files rewritten from its rows, then going on.

The rows "in the database" are the rows the first recorder handed its writer (a stand-in
keeps them), cut where the test says the database had them when the recorder died.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import UTC, datetime

import numpy as np

from encoders.logging_utils import load_run_embeddings
from encoders.services.recorder.acks import AckTracker
from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.recorder import Recorder
from encoders.services.recorder.run import RecordedRun
from encoders.services.recorder.runlock import RunLock
from encoders.shared.messages import Ack, EndOfStream, MetricsRecord
from encoders.shared.storage.frames import StoredRow
from encoders.shared.storage.runs import RunRow, StoredStream

from .test_recorder_streams import RunsTable, answer


class Rows:
    """Stands in for the FrameWriter and, afterwards, for the database's frames table."""

    def __init__(self):
        self.rows, self.model = [], None
        self.events: list[tuple] = []

    def add(self, row):
        self.rows.append(row)

    def set_model(self, model, dim):
        self.model = (model, dim)

    def add_event(self, stream, seq, t, kind, value):
        self.events.append((stream, seq, kind, value))

    def keep(self, **last_seq):
        """What the database holds: each stream's rows up to a seq."""
        self.rows = [r for r in self.rows if r.seq <= last_seq.get(r.stream, -1)]

    def stored(self) -> dict[str, StoredStream]:
        out = {}
        for stream in {r.stream for r in self.rows}:
            mine = [r for r in self.rows if r.stream == stream]
            out[stream] = StoredStream(len(mine), max(r.seq for r in mine), max(r.t_capture for r in mine))
        return out

    def each_stored_row(self, run_id, stream, take):
        mine = sorted((r for r in self.rows if r.stream == stream), key=lambda r: r.seq)
        take(
            [
                StoredRow(
                    r.seq,
                    r.t_capture,
                    r.similarity,
                    r.drift,
                    r.embedding,
                    r.snapshot_path,
                    r.keyframe,
                    r.seq if r.keyframe_seq is None else r.keyframe_seq,
                )
                for r in mine
            ]
        )
        return len(mine)


def record(stream, seq, core="core-1", embedded=None):
    v = np.random.default_rng([seq, len(stream)]).standard_normal(8).astype(np.float32)
    return MetricsRecord(
        stream=stream,
        seq=seq,
        t_capture=100.0 + seq,
        t_encoded=100.5 + seq,
        worker="w",
        model="ViT-B-32",
        similarity=None if seq == 0 else 0.5,
        drift=None if seq == 0 else 0.5,
        counts={"published": seq + 1, "embedded": seq + 1 if embedded is None else embedded, "dropped": 0},
        core=core,
        vector=v / np.linalg.norm(v),
    )


def lines(path) -> list[int]:
    return [int(r[1]) for r in list(csv.reader(path.open()))[1:]]


def test_a_resumed_run_agrees_with_its_rows_then_goes_on_once_per_frame(tmp_path):
    settings = RecorderConfig(snapshot_interval=0.0, embedding_interval=3)
    first = RecordedRun.claim(RunsTable(), runs_dir=tmp_path, run_dir=tmp_path / "run")
    db = Rows()
    rec = Recorder(first, db, settings)
    for seq in range(10):
        rec.on_message(record("cam0", seq))
    for seq in range(3):
        rec.on_message(record("cam1", seq))
    answer(rec)  # every frame's snapshot (interval 0): each row goes to the writer once its picture came
    rec.flush_files()
    rec.run.write_summary({"messages": dict(rec.counters)}, rec.stream_summaries(Counter()))
    assert first.lock is not None
    first.lock.release()  # as the system does when the recorder is killed
    # When it died, drift.csv held cam0's ten lines but the database only seven rows; cam1's
    # lines were still in the file's buffer while its three rows were committed.
    db.keep(cam0=6, cam1=2)
    (tmp_path / "run" / "cam1" / "drift.csv").write_text("timestamp,frame,similarity,drift\n")
    assert lines(tmp_path / "run" / "drift.csv") == list(range(10))

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    row = RunRow(first.id, "run", datetime.now(UTC), None, "ViT-B-32", 8, config, None)
    lock = RunLock.take(tmp_path / "run")
    assert lock is not None
    run = RecordedRun.reopen(RunsTable(), row, tmp_path / "run", lock)
    acks = AckTracker()
    resumed = Recorder(run, db, settings, acks)
    resumed.resume(db, db.stored())
    assert lines(tmp_path / "run" / "drift.csv") == list(range(7))
    assert lines(tmp_path / "run" / "cam1" / "drift.csv") == [0, 1, 2]
    # Whole batches of 3 on disk; the seventh row waits for its batch to fill, as in a run never interrupted.
    assert list(load_run_embeddings(tmp_path / "run", stream="cam0")[2]) == list(range(6))
    assert acks.floors() == {"cam0": 6, "cam1": 2}

    # The core sends again what it has no acknowledgement of, then what comes next.
    resumed.core = "core-1"
    for seq in range(5, 12):
        resumed.on_message(record("cam0", seq))
        answer(resumed)
    resumed.on_message(EndOfStream("cam0", 11, {"published": 12, "embedded": 12, "dropped": 0}))
    assert acks.take() == [Ack("cam0", 6)]  # 5 and 6 again: said again, written once
    resumed.close_files()
    top = run.finish({}, resumed.stream_summaries(Counter(r.stream for r in db.rows)))
    assert lines(tmp_path / "run" / "drift.csv") == list(range(12))
    assert sorted(r.seq for r in db.rows if r.stream == "cam0") == list(range(12))
    _, _, idx = load_run_embeddings(tmp_path / "run", stream="cam0")
    assert list(idx) == list(range(12))
    cam0 = top["streams"]["cam0"]
    assert cam0["records"] == 12 and cam0["db_rows"] == 12 and cam0["frames"]["embedded"] == 12
    assert cam0["first_seq"] == 0 and cam0["ended"]
    assert top["streams"]["cam1"]["records"] == 3
    assert resumed.counters["repeated_records"] == 2
    assert "resumed_at" in json.loads((tmp_path / "run" / "config.json").read_text())["run"]
    assert not (tmp_path / "run" / ".recorder.lock").exists()


def test_counts_of_two_lives_of_the_core_add_up(tmp_path):
    run = RecordedRun.claim(RunsTable(), runs_dir=tmp_path, run_dir=tmp_path / "run")
    rec = Recorder(run, Rows(), RecorderConfig())
    rec.core = "core-1"
    for seq in range(5):
        rec.on_message(record("cam0", seq, core="core-1"))
    rec.core = "core-2"  # the core restarted: its counts start again from zero
    for i, seq in enumerate(range(8, 12)):
        rec.on_message(record("cam0", seq, core="core-2", embedded=i + 1))
    # The end's counts are the final ones of the life the session is in.
    rec.on_message(EndOfStream("cam0", 12, {"published": 5, "embedded": 4, "dropped": 1, "skipped": 0, "lost": 0}))
    rec.close_files()
    top = run.finish({}, rec.stream_summaries(Counter()))
    frames = top["streams"]["cam0"]["frames"]
    assert frames["embedded"] == 9 and frames["published"] == 10
    assert frames["dropped"] == 1 and frames["lost"] is None  # the first life never said
    assert top["streams"]["cam0"]["lives"]["core-2"]["published"] == 5
    assert top["totals"]["frames"]["embedded"] == 9
