"""Kill any service mid-run with SIGKILL, start it again once its peers have counted it gone (the
heartbeat timeout), run on, stop the pipeline as an operator does: every frame the camera's ingest
read is stored exactly once or counted (issue #12), and summary.json, drift.csv, the npz batches
and the database agree.

Separate processes on real sockets (tests/integration/pipeline.py), a real PostgreSQL.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable

import psycopg
import pytest

from encoders.logging_utils import load_run_embeddings
from encoders.shared.messages import MetricsRecord, StreamStart

from ..conftest import Service, wait_for
from .pipeline import Pipeline, collect, subscribe

GONE_S = 60  # how long a killed service's peers may take to count it gone: 3 s of silence, on a busy machine more


@pytest.fixture
def pipeline(service, tiny_model, tmp_path, database) -> Pipeline:
    return Pipeline(service, tiny_model, tmp_path, database)


def start(pipeline: Pipeline, workers: int = 1) -> dict[str, Service]:
    started = {"core": pipeline.start_core(), "recorder": pipeline.start_recorder()}
    for i in range(workers):
        started[f"worker{i}"] = pipeline.start_worker(f"w{i}")
    started["ingest"] = pipeline.start_ingest(0, pipeline.start_camera(0, fps=15))
    return started


def records_after(sub, seq: int, n: int) -> list[MetricsRecord]:
    """Records until ``n`` of them come after ``seq`` (the run goes on after the restart)."""
    got: list[MetricsRecord] = []
    deadline = time.monotonic() + 120
    while sum(r.seq > seq for r in got) < n:
        assert time.monotonic() < deadline, f"fewer than {n} records after seq {seq} in 120 s"
        got += [m for m in collect(sub, records=1) if isinstance(m, MetricsRecord)]
    return got


def said_again(services: list[Service], pattern: str) -> Callable[[], bool]:
    """Whether each of ``services`` has logged ``pattern`` once more than it had when this was called."""
    before = [len(re.findall(pattern, s.output())) for s in services]
    return lambda: all(len(re.findall(pattern, s.output())) > n for s, n in zip(services, before, strict=True))


def kill(victim: Service, gone: Callable[[], bool]) -> None:
    """SIGKILL ``victim``, and wait until its peers have counted it gone (``gone``, made before)."""
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    wait_for(gone, GONE_S, f"the killed {victim.args[0]}'s peers to count it gone")


def kill_and_restart(
    pipeline: Pipeline, sub, victim: Service, restart, gone: Callable[[], bool]
) -> tuple[int, Service]:
    """Records before and after: SIGKILL ``victim``, start it again once ``gone`` says its peers have
    counted it gone; the last seq seen before."""
    before = [m for m in collect(sub, records=15) if isinstance(m, MetricsRecord)]
    kill(victim, gone)
    again = restart()
    records_after(sub, before[-1].seq, 15)
    return before[-1].seq, again


def stop(pipeline: Pipeline) -> None:
    done = pipeline.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    for svc in pipeline.service.started:
        if svc.args[0] != "pisim" and svc.proc.returncode != -signal.SIGKILL:
            assert svc.wait(60) == 0, f"{svc.args[0]}: " + svc.output()[-3000:]


def frames_read(ingest: Service) -> int:
    """What the ingest says it read from the camera, in its last line."""
    found = re.findall(r"(\d+) frames read", ingest.output())
    assert found, ingest.output()[-2000:]
    return int(found[-1])


def check_run(pipeline: Pipeline) -> dict:
    """summary.json, drift.csv, the npz batches and the database agree; every frame once; counts add up."""
    assert pipeline.run_dir is not None
    run = pipeline.run_dir
    summary = json.loads((run / "summary.json").read_text())
    cam0 = summary["streams"]["cam0"]
    f = cam0["frames"]
    assert f["published"] == f["embedded"] + f["dropped"] + f["skipped"] + f["lost"], f
    rows = [r[1] for r in pipeline.rows()]
    assert len(rows) == len(set(rows)), "a frame stored twice"
    assert f["embedded"] == cam0["db_rows"] == cam0["records"] == len(rows)
    lines = (run / "drift.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[1]) for line in lines] == rows, "drift.csv and the database disagree"
    _emb, _ts, indices = load_run_embeddings(run)
    assert list(indices) == rows, "the npz batches and the database disagree"
    with psycopg.connect(pipeline.database) as conn:
        row = conn.execute("SELECT ended_at FROM runs WHERE name = %s", (run.name,)).fetchone()
    assert row is not None and row[0] is not None, "the run was left open"
    return cam0


@pytest.mark.timeout(300)
def test_a_killed_worker_is_replaced_and_its_frames_counted(pipeline, sockets):
    sub = subscribe(sockets, pipeline.metrics_pub)
    services = start(pipeline, workers=2)
    gone = said_again([services["core"]], r"worker w1 left \(silent for")
    _, _ = kill_and_restart(pipeline, sub, services["worker1"], lambda: pipeline.start_worker("w1"), gone)
    stop(pipeline)
    cam0 = check_run(pipeline)
    assert cam0["frames"]["published"] == frames_read(services["ingest"])


@pytest.mark.timeout(300)
def test_a_killed_recorder_resumes_its_run_and_loses_nothing(pipeline, sockets):
    sub = subscribe(sockets, pipeline.metrics_pub)
    services = start(pipeline)
    gone = said_again([services["core"]], r"recorder \S+ left: silent for")
    _, _ = kill_and_restart(pipeline, sub, services["recorder"], lambda: pipeline.start_recorder(again=True), gone)
    stop(pipeline)
    cam0 = check_run(pipeline)
    assert cam0["frames"]["published"] == frames_read(services["ingest"])
    runs = pipeline.folder / "runs"
    others = [p for p in runs.iterdir() if not p.name.startswith(".")] if runs.exists() else []
    assert others == [], "the restarted recorder resumed the run rather than starting another"


@pytest.mark.timeout(300)
def test_a_killed_core_is_rejoined_by_everyone_and_the_counts_tell_the_truth(pipeline, sockets):
    sub = subscribe(sockets, pipeline.metrics_pub)
    services = start(pipeline)
    gone = said_again([services["recorder"], services["worker0"], services["ingest"]], "has been silent")
    last, _ = kill_and_restart(pipeline, sub, services["core"], pipeline.start_core, gone)
    stop(pipeline)
    cam0 = check_run(pipeline)
    # Frames the dead core had numbered but not released are counted lost, and its numbers are
    # never reused: the new life starts above everything the first one handed out.
    assert cam0["frames"]["published"] == frames_read(services["ingest"])
    assert cam0["last_seq"] > last
    assert len(cam0["lives"]) == 2


@pytest.mark.timeout(300)
def test_a_killed_ingest_starts_a_new_epoch_above_the_stored_numbers(pipeline, sockets):
    sub = subscribe(sockets, pipeline.metrics_pub)
    services = start(pipeline)
    url = next(s for s in pipeline.service.started if s.args[0] == "pisim")
    camera = f"http://127.0.0.1:{url.args[url.args.index('--port') + 1]}/stream.mjpg"
    starts: list[StreamStart] = []
    before = [m for m in collect(sub, records=15) if isinstance(m, MetricsRecord)]
    kill(services["ingest"], said_again([services["core"]], r"ingest \S+ of stream cam0 left: silent for"))
    again = pipeline.start_ingest(0, camera)
    deadline = time.monotonic() + 120
    after: list[MetricsRecord] = []
    while len(after) < 15:
        assert time.monotonic() < deadline
        for m in collect(sub, records=1):
            if isinstance(m, StreamStart):
                starts.append(m)
            elif isinstance(m, MetricsRecord) and starts:
                after.append(m)
    assert starts and starts[-1].first_seq > before[-1].seq  # numbers go on: nothing stored collides
    assert after[0].similarity is None  # drift is never computed across the restart
    stop(pipeline)
    cam0 = check_run(pipeline)
    assert cam0["last_seq"] >= after[-1].seq
    # The first ingest's numbered frames (at least up to the last record seen) and all the second read.
    assert cam0["frames"]["published"] >= before[-1].seq + 1 + frames_read(again)
