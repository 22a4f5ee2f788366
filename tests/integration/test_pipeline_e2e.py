"""The whole pipeline on real parts: pisim over HTTP, ingest, two encoder workers, the core
(metrics) and the recorder as separate processes on real ZeroMQ sockets, a real PostgreSQL with
pgvector. Every service is given the core's address only, and the pipeline is stopped as an
operator stops it (`encoders stop`)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest

from encoders.logging_utils import load_run_embeddings
from encoders.shared.messages import EndOfStream, MetricsRecord

from .pipeline import Pipeline, collect, subscribe

FRAMES = 120


@pytest.fixture
def pipeline(service, tiny_model, tmp_path, database) -> Pipeline:
    return Pipeline(service, tiny_model, tmp_path, database)


def start(pipeline: Pipeline, *, cameras: int, frames: int, lossless: bool, workers: int = 2, fps: float = 40) -> list:
    """Core, recorder, workers, then each camera and its ingest (which stops after ``frames``)."""
    pipeline.stream_dirs = cameras > 1
    pipeline.start_core()
    pipeline.start_recorder()
    for i in range(workers):
        pipeline.start_worker(f"w{i}")
    ingests = []
    for i in range(cameras):
        url = pipeline.start_camera(i, fps=fps)
        ingests.append(
            pipeline.start_ingest(i, url, "--max-frames", str(frames), *(["--lossless"] if lossless else []))
        )
    return ingests


def records_and_ends(messages) -> tuple[list[MetricsRecord], list[EndOfStream]]:
    return (
        [m for m in messages if isinstance(m, MetricsRecord)],
        [m for m in messages if isinstance(m, EndOfStream)],
    )


def stop_and_check_every_service_exits(pipeline: Pipeline) -> None:
    done = pipeline.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    for svc in pipeline.service.started:
        if svc.args[0] != "pisim":
            assert svc.wait(60) == 0, f"{svc.args[0]}: " + svc.output()[-3000:]


def check_stream(folder: Path, records: list[MetricsRecord], eos: EndOfStream, rows: list, snapshot_interval: float):
    """Files and database rows of one stream agree with what metrics published."""
    counts = eos.counts
    # Every frame ingest published was embedded exactly once or counted as dropped or skipped.
    assert counts["published"] == counts["embedded"] + counts["dropped"] + counts["skipped"] + counts["lost"]
    assert counts["lost"] == 0 and counts["late"] == 0
    seqs = [r.seq for r in records]
    assert len(seqs) == len(set(seqs)) == counts["embedded"], "a frame was embedded twice or not at all"
    assert seqs == sorted(seqs), "records must come out in sequence order"
    assert max(seqs) <= eos.last_seq

    # Database: one row per embedded frame, with its sequence number and values.
    assert [r[1] for r in rows] == seqs
    for rec, row in zip(records, rows, strict=False):
        assert row[2] == (None if rec.similarity is None else pytest.approx(rec.similarity, abs=1e-6))
        assert row[3] == (None if rec.drift is None else pytest.approx(rec.drift, abs=1e-6))
        np.testing.assert_allclose(np.array(json.loads(row[5]), dtype=np.float32), rec.vector, atol=1e-6)

    # drift.csv agrees with the metrics records.
    with open(folder / "drift.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert list(lines[0].keys()) == ["timestamp", "frame", "similarity", "drift"]
    assert [int(x["frame"]) for x in lines] == seqs
    for rec, line in zip(records, lines, strict=False):
        assert float(line["timestamp"]) == pytest.approx(rec.t_capture, abs=1e-5)
        if rec.drift is None:
            assert line["similarity"] == line["drift"] == ""
        else:
            assert float(line["similarity"]) == pytest.approx(rec.similarity, abs=1e-6)
            assert float(line["drift"]) == pytest.approx(rec.drift, abs=1e-6)
            assert float(line["drift"]) == pytest.approx(1 - float(line["similarity"]), abs=1e-6)

    # The npz batches load through the seed's public function.
    embeddings, timestamps, indices = load_run_embeddings(folder)
    assert embeddings.shape == (len(records), records[0].vector.size)
    assert list(indices) == seqs
    np.testing.assert_allclose(timestamps, [r.t_capture for r in records], atol=1e-6)
    np.testing.assert_allclose(embeddings, np.stack([r.vector for r in records]), atol=1e-6)
    assert len(list((folder / "embeddings").glob("batch_*.npz"))) == math.ceil(len(records) / 50)

    # Snapshots: the first embedded frame, then one per interval of capture time.
    by_seq = {r.seq: r for r in records}
    shots = sorted(int(p.stem.split("_")[1]) for p in (folder / "snapshots").glob("frame_*.jpg"))
    assert shots and shots[0] == seqs[0]
    times = [by_seq[s].t_capture for s in shots]
    assert all(b - a >= snapshot_interval - 1e-6 for a, b in itertools.pairwise(times))
    span = records[-1].t_capture - records[0].t_capture
    assert len(shots) >= int(span / snapshot_interval * 0.5), (shots, span)
    with_path = {r[1] for r in rows if r[4]}
    assert with_path == set(shots), "each snapshot is linked from its frame's row"

    # summary.json agrees with all of the above.
    summary = json.loads((folder / "summary.json").read_text())["streams"][eos.stream]
    assert summary["frames"]["published"] == counts["published"]
    for key in ("embedded", "dropped", "skipped", "lost"):
        assert summary["frames"][key] == counts[key]
    assert summary["records"] == summary["db_rows"] == len(rows) == len(records)
    assert summary["snapshots"] == len(shots)
    assert summary["npz_batches"] == math.ceil(len(records) / 50)
    drifts = [r.drift for r in records if r.drift is not None]
    assert summary["drift"]["mean"] == pytest.approx(float(np.mean(drifts)), abs=1e-6)
    assert summary["drift"]["max"] == pytest.approx(max(drifts), abs=1e-6)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("lossless", [False, True], ids=["realtime", "lossless"])
def test_one_camera_two_workers_everything_accounted_for(pipeline, sockets, lossless):
    sub = subscribe(sockets, pipeline.metrics_pub)
    start(pipeline, cameras=1, frames=FRAMES, lossless=lossless)
    records, (eos,) = records_and_ends(collect(sub, until_eos=1))
    stop_and_check_every_service_exits(pipeline)
    assert eos.counts["published"] == FRAMES
    if lossless:
        assert eos.counts["embedded"] == FRAMES and eos.counts["dropped"] == 0
    # Both workers did part of the work, and no frame twice (checked below).
    assert {r.worker for r in records} == {"w0", "w1"}
    # One camera: exactly the seed's layout, in the run folder itself.
    run_dir = pipeline.run_dir
    assert run_dir is not None
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "drift.csv",
        "embeddings",
        "snapshots",
        "summary.json",
    ]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["recorder"]["embedding_interval"] == 50
    check_stream(run_dir, records, eos, pipeline.rows(), snapshot_interval=0.5)


@pytest.mark.timeout(240)
def test_two_cameras_keep_their_own_drift_rows_and_files(pipeline, sockets):
    sub = subscribe(sockets, pipeline.metrics_pub)
    start(pipeline, cameras=2, frames=60, lossless=True)
    records, eos = records_and_ends(collect(sub, until_eos=2))
    stop_and_check_every_service_exits(pipeline)
    rows = pipeline.rows()
    run_dir = pipeline.run_dir
    assert run_dir is not None
    assert {p.name for p in run_dir.iterdir() if p.is_dir()} == {"cam0", "cam1"}
    for e in eos:
        mine = [r for r in records if r.stream == e.stream]
        assert len(mine) == 60
        # Drift is between consecutive frames of one stream: recompute it from this stream's vectors alone.
        for prev, cur in itertools.pairwise(mine):
            assert cur.similarity == pytest.approx(float(np.dot(prev.vector, cur.vector)), abs=1e-5)
        check_stream(run_dir / e.stream, mine, e, [r for r in rows if r[0] == e.stream], snapshot_interval=0.5)


@pytest.mark.timeout(240)
def test_a_worker_that_dies_does_not_stall_the_rest(pipeline, sockets):
    """Kill one of two workers mid-stream: the other takes every frame from then on, and the
    frames the dead one held are counted as lost once the core misses its heartbeats."""
    sub = subscribe(sockets, pipeline.metrics_pub)
    start(pipeline, cameras=1, frames=200, lossless=False, fps=30)
    first = collect(sub, records=30)
    workers = [s for s in pipeline.service.started if s.args[0] == "encode"]
    workers[1].proc.send_signal(signal.SIGKILL)
    later = collect(sub, until_eos=1)
    records, (eos,) = records_and_ends(first + later)
    counts = eos.counts
    assert counts["published"] == 200
    assert counts["published"] == counts["embedded"] + counts["dropped"] + counts["skipped"] + counts["lost"]
    assert counts["lost"] <= 16  # at most what the dead worker held: its capacity
    after = records_and_ends(later)[0][16:]
    assert after and {r.worker for r in after} == {"w0"}, "the surviving worker took over"
    workers[1].proc.wait(10)
    done = pipeline.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(pipeline.rows()) == counts["embedded"] == len(records)
