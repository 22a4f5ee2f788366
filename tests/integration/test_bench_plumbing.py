"""The plumbing benchmark's harness (benchmarks/bench_plumbing.py) on one tiny case, so that it cannot
rot unseen between runs of `make bench`: this commit's pipeline with ENCODERS_RUNTIME=none workers,
measured twice as two versions (the report compares two), and the bare forwarder, with keys on;
its report has its shape and its counts add up. Nothing here depends on how fast the machine is: a
window ends after a number of frames. The comparison with d031ce1 itself (a `git worktree add`,
whose workers are benchmarks/plumbing_standin.py: it speaks that commit's protocol, where the core
handed workers their JPEGs, not this one's data link) is the benchmark's, not this test's."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.bench_plumbing import REPO, keys_for, measure, print_tables, ratios
from benchmarks.plumbing_cpu import CORE_THREADS, INGEST_THREADS
from benchmarks.plumbing_run import COUNTS, Budget, Case, Version

PIPELINE_GROUPS = {"core", *CORE_THREADS, "recorder", "postgres", "ingest", *INGEST_THREADS, "workers", "source"}
FLOOR_GROUPS = {"core", *CORE_THREADS, "recorder", "ingest", *INGEST_THREADS, "workers"}


@pytest.mark.timeout(300)
def test_one_tiny_case_reports_every_figure_and_every_frame_is_accounted_for(tmp_path, capsys):
    keys = keys_for("this", REPO / "src", tmp_path)
    this = Version("this", REPO / "src", keys, none_runtime=True)
    again = Version("again", REPO / "src", keys, none_runtime=True)
    budget = Budget(warmup_s=0.2, frames=30, seconds=120)  # 30 frames, however long they take
    results, server = measure([Case(keys=True, size=(640, 480), cameras=1)], [this, again], budget)
    ratios(results, "this", "again")
    print_tables(results, "this", "again")

    (case,) = results
    assert (case["keys"], case["size"], case["cameras"], case["workers"]) == (True, [640, 480], 1, 1)
    assert case["jpeg_bytes"] > 10_000 and server["postgresql"]
    assert set(case["variants"]) == {"this", "again", "floor"}
    for label, got in case["variants"].items():
        assert got["frames"] >= budget.frames and got["seconds"] > 0 and got["frames_per_s"] > 0, label
        cpu = got["cpu_ms_per_frame"]
        assert set(cpu) == (FLOOR_GROUPS if label == "floor" else PIPELINE_GROUPS), label
        assert all(v >= 0 and math.isfinite(v) for v in cpu.values()), (label, cpu)
        assert cpu["core"] > 0 and cpu["core_main"] > 0 and cpu["workers"] > 0, (label, cpu)
        # The core's threads are the core: its main thread, ZeroMQ's I/O threads, the rest.
        assert sum(cpu[t] for t in CORE_THREADS) == pytest.approx(cpu["core"], rel=0.01, abs=0.01), (label, cpu)
        # So are the ingests': their main threads, ZeroMQ's I/O threads, the rest (the camera reader's).
        assert cpu["ingest_main"] > 0, (label, cpu)
        assert sum(cpu[t] for t in INGEST_THREADS) == pytest.approx(cpu["ingest"], rel=0.01, abs=0.01), (label, cpu)
        # Every frame published has its one outcome, stream by stream and in total.
        for counts in [*got["streams"].values(), got["totals"]]:
            assert set(counts) == set(COUNTS)
            assert counts["published"] == counts["embedded"] + counts["dropped"] + counts["skipped"] + counts["lost"]
        assert set(got["streams"]) == {"cam0"} and got["totals"]["embedded"] >= got["frames"], label
        if label != "floor":
            assert got["exits"] == [], (label, got["exits"])  # every service exited 0 on `encoders stop`
    # Of each figure measured on both (a group idle in one window, PostgreSQL's maybe, has none).
    assert {"frames_per_s", "core", "core_main", "workers"} <= set(case["ratio"]) <= {"frames_per_s", *PIPELINE_GROUPS}
    assert all(v >= 0 and math.isfinite(v) for v in case["ratio"].values()) and case["ratio"]["core"] > 0
    assert set(case["core_over_floor"]) == {"this", "again"}
    json.dumps(results)  # the report is JSON as it is
    assert "Ratios this / again" in capsys.readouterr().out


@pytest.mark.timeout(300)
def test_with_the_model_in_the_workers_every_frame_is_embedded_by_the_real_encoder(tmp_path, monkeypatch):
    """BENCH_PLUMBING_WORKERS=model, what benchmarks/gpu/run.sh measures on a GPU box: the workers are the
    real encoder (ViT-B-32, random weights; on this machine's CPU), the rest as in every case."""
    monkeypatch.setenv("BENCH_PLUMBING_WORKERS", "model")
    this = Version("this", REPO / "src", keys_for("this", REPO / "src", tmp_path), none_runtime=True)
    budget = Budget(warmup_s=0.2, frames=10, seconds=120)
    results, _ = measure([Case(keys=True, size=(640, 480), cameras=1)], [this], budget, with_floor=False)

    got = results[0]["variants"]["this"]
    assert got["exits"] == [] and got["frames"] >= budget.frames
    totals = got["totals"]
    assert totals["embedded"] >= got["frames"] and totals["lost"] == totals["skipped"] == 0
    assert totals["published"] == totals["embedded"] + totals["dropped"]
    # ViT-B-32 is over 4 GFLOP an image: no CPU does that in 4 ms (a worker of --runtime none takes
    # about 1 ms a frame here, decoding included). So the frames went through the model.
    assert got["cpu_ms_per_frame"]["workers"] > 4.0, got["cpu_ms_per_frame"]
