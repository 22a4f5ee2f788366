"""The whole pipeline on real parts: pisim over HTTP, ingest, two encoder workers, metrics and
the recorder as separate processes on real ZeroMQ sockets, a real PostgreSQL with pgvector."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import psycopg
import pytest
import zmq

from encoders.logging_utils import load_run_embeddings
from encoders.shared import zmqio
from encoders.shared.messages import EndOfStream, MetricsRecord

from ..conftest import Sockets, free_port, wait_for

FRAMES = 120


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A real PostgreSQL 16 with pgvector (the embedded server the all-in-one command uses)."""
    from encoders.shared.storage.embedded import database

    with database("", str(tmp_path_factory.mktemp("pg"))) as url:
        yield url


def tcp(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def start_pipeline(
    service,
    tiny_model,
    tmp_path,
    database,
    *,
    cameras: int,
    frames: int,
    lossless: bool,
    workers: int = 2,
    fps: float = 40,
):
    """Start every service; returns (run_dir, metrics PUB endpoint, ingest processes)."""
    ports = {name: free_port() for name in ("metrics_in", "metrics", "records")}
    cams = [{"frames": free_port(), "work": free_port(), "http": free_port()} for _ in range(cameras)]
    run_dir = tmp_path / tmp_path.name  # run names are unique in the database, as the seed's timestamps are
    service(
        "metrics",
        "--metrics-in-bind",
        tcp(ports["metrics_in"]),
        "--metrics-bind",
        tcp(ports["metrics"]),
        "--records-bind",
        tcp(ports["records"]),
        "--exit-after-streams",
        str(cameras),
        "--max-wait",
        "5",
    )
    recorder = service(
        "record",
        "--records",
        tcp(ports["records"]),
        "--frames",
        ",".join(tcp(c["frames"]) for c in cams),
        "--database-url",
        database,
        "--run-dir",
        str(run_dir),
        "--snapshot-interval",
        "0.5",
        "--embedding-interval",
        "50",
        "--exit-after-streams",
        str(cameras),
        *(["--stream-dirs"] if cameras > 1 else []),
    )
    ready = [tmp_path / f"ready{i}" for i in range(workers)]
    for i in range(workers):
        service(
            "encode",
            "--work",
            ",".join(tcp(c["work"]) for c in cams),
            "--metrics-in",
            tcp(ports["metrics_in"]),
            "--threads",
            "1",
            "--batch-size",
            "8",
            "--worker-id",
            f"w{i}",
            "--ready-file",
            str(ready[i]),
            env=tiny_model,
        )
    wait_for(lambda: all(r.exists() for r in ready), 60, "encoder workers to load the model")
    ingests = []
    for i, c in enumerate(cams):
        service(
            "pisim",
            "--port",
            str(c["http"]),
            "--fps",
            str(fps),
            "--width",
            "320",
            "--height",
            "240",
            "--seed",
            str(i),
            "--scene-every",
            "1",
        )
        ingests.append(
            service(
                "ingest",
                "--stream",
                f"http://127.0.0.1:{c['http']}/stream.mjpg",
                "--stream-id",
                f"cam{i}",
                "--frames-bind",
                tcp(c["frames"]),
                "--work-bind",
                tcp(c["work"]),
                "--metrics-in",
                tcp(ports["metrics_in"]),
                "--max-frames",
                str(frames),
                *(["--lossless"] if lossless else []),
            )
        )
    return run_dir, tcp(ports["metrics"]), ingests, recorder


def collect_records(sockets: Sockets, endpoint: str) -> zmq.Socket:
    """A viewer's subscription to metrics' records and ends of stream."""
    return sockets.connect(zmq.SUB, endpoint, subscribe=[b"metrics/", b"eos/"])


def drain_records(sub, n: int, timeout_s: float = 90):
    """The next n metrics records (no end of stream expected yet)."""
    records: list[MetricsRecord] = []
    while len(records) < n:
        assert sub.poll(timeout_s * 1000), f"no message from metrics in {timeout_s} s"
        msg, _ = zmqio.receive(sub, topic=True)
        if isinstance(msg, MetricsRecord):
            records.append(msg)
    return records


def drain(sub, until_eos: int, timeout_s: float = 90):
    records: list[MetricsRecord] = []
    eos: list[EndOfStream] = []
    while len(eos) < until_eos:
        assert sub.poll(timeout_s * 1000), f"no message from metrics in {timeout_s} s"
        msg, _ = zmqio.receive(sub, topic=True)
        if isinstance(msg, MetricsRecord):
            records.append(msg)
        elif isinstance(msg, EndOfStream):
            eos.append(msg)
    return records, eos


def db_rows(database: str, run_name: str):
    with psycopg.connect(database) as conn:
        return conn.execute(
            "SELECT f.stream, f.seq, f.similarity, f.drift, f.snapshot_path, f.embedding::text, f.worker "
            "FROM frames f JOIN runs r ON r.id = f.run_id WHERE r.name = %s ORDER BY f.stream, f.seq",
            (run_name,),
        ).fetchall()


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
def test_one_camera_two_workers_everything_accounted_for(service, sockets, tiny_model, tmp_path, database, lossless):
    run_dir, metrics_pub, ingests, recorder = start_pipeline(
        service, tiny_model, tmp_path, database, cameras=1, frames=FRAMES, lossless=lossless
    )
    sub = collect_records(sockets, metrics_pub)
    records, (eos,) = drain(sub, until_eos=1)
    assert ingests[0].wait(30) == 0
    assert recorder.wait(60) == 0, recorder.output()[-3000:]
    assert eos.counts["published"] == FRAMES
    if lossless:
        assert eos.counts["embedded"] == FRAMES and eos.counts["dropped"] == 0
    # Both workers did part of the work, and no frame twice (checked below).
    assert {r.worker for r in records} == {"w0", "w1"}
    # One camera: exactly the seed's layout, in the run folder itself.
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "drift.csv",
        "embeddings",
        "snapshots",
        "summary.json",
    ]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["recorder"]["embedding_interval"] == 50 if "recorder" in config else True
    check_stream(run_dir, records, eos, db_rows(database, run_dir.name), snapshot_interval=0.5)


@pytest.mark.timeout(240)
def test_two_cameras_keep_their_own_drift_rows_and_files(service, sockets, tiny_model, tmp_path, database):
    run_dir, metrics_pub, _ingests, recorder = start_pipeline(
        service, tiny_model, tmp_path, database, cameras=2, frames=60, lossless=True
    )
    sub = collect_records(sockets, metrics_pub)
    records, eos = drain(sub, until_eos=2)
    assert recorder.wait(60) == 0, recorder.output()[-3000:]
    rows = db_rows(database, run_dir.name)
    assert {p.name for p in run_dir.iterdir() if p.is_dir()} == {"cam0", "cam1"}
    for e in eos:
        mine = [r for r in records if r.stream == e.stream]
        assert len(mine) == 60
        # Drift is between consecutive frames of one stream: recompute it from this stream's vectors alone.
        for prev, cur in itertools.pairwise(mine):
            assert cur.similarity == pytest.approx(float(np.dot(prev.vector, cur.vector)), abs=1e-5)
        check_stream(run_dir / e.stream, mine, e, [r for r in rows if r[0] == e.stream], snapshot_interval=0.5)


@pytest.mark.timeout(240)
def test_a_worker_that_dies_does_not_stall_the_rest(service, sockets, tiny_model, tmp_path, database):
    """Kill one of two workers mid-stream: the other takes every frame from then on, and the
    frames the dead one held are given up after the wait and counted as lost."""
    import signal

    run_dir, metrics_pub, _ingests, recorder = start_pipeline(
        service, tiny_model, tmp_path, database, cameras=1, frames=200, lossless=False, fps=30
    )
    sub = collect_records(sockets, metrics_pub)
    workers = [s for s in service.started if s.args[0] == "encode"]
    first = drain_records(sub, 30)
    workers[1].proc.send_signal(signal.SIGKILL)
    records, (eos,) = drain(sub, until_eos=1)
    assert recorder.wait(60) == 0, recorder.output()[-3000:]
    records = first + records
    counts = eos.counts
    assert counts["published"] == 200
    assert counts["published"] == counts["embedded"] + counts["dropped"] + counts["skipped"] + counts["lost"]
    assert counts["lost"] <= 16  # at most what the dead worker held: one batch encoding, one gathering
    after = records[30 + 16 :]
    assert after and {r.worker for r in after} == {"w0"}, "the surviving worker took over"
    assert len(db_rows(database, run_dir.name)) == counts["embedded"] == len(records)
