"""The feed benchmark (benchmarks/bench_feed.py) on a few frames, so that it cannot rot unseen between
runs of `make bench`: both ways of reading the camera measured, each round, with figures a report can
hold. How they compare is the benchmark's to say, not this test's."""

from __future__ import annotations

import math

from benchmarks import bench_feed


def test_both_ways_are_measured_each_round(monkeypatch, capsys):
    monkeypatch.setattr(bench_feed, "FRAMES", 100)
    monkeypatch.setattr(bench_feed, "ROUNDS", 2)
    got = bench_feed.main()
    assert set(got["cpu_ms_per_frame"]) == {"main thread", "reader thread"}
    for name, values in got["cpu_ms_per_frame"].items():
        assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values), name
    assert len(got["ratios"]) == 2
    assert "main thread / reader thread, round by round" in capsys.readouterr().out
