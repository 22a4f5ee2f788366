"""The retention plan (issue #15): which runs go, in which order, and what is never touched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from encoders.services.recorder.retention import Policy, StoredRun, plan

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MB = 10**6


def run(i: int, *, days_ago: float | None, mb: int = 100, thumbs_mb: int = 10) -> StoredRun:
    ended = None if days_ago is None else NOW - timedelta(days=days_ago)
    return StoredRun(i, f"run{i}", ended, None, mb * MB - thumbs_mb * MB, thumbs_mb * MB, thumbs_mb * MB)


def test_no_policy_keeps_everything():
    assert plan([run(1, days_ago=400), run(2, days_ago=None)], Policy(), NOW) == []


def test_runs_that_ended_before_the_cutoff_go_whole_and_a_live_run_never():
    runs = [run(1, days_ago=40), run(2, days_ago=31), run(3, days_ago=29), run(4, days_ago=None)]
    actions = plan(runs, Policy(days=30), NOW)
    assert [(a.kind, a.run.name) for a in actions] == [("delete", "run1"), ("delete", "run2")]
    assert all(a.frees == 100 * MB for a in actions) and "30 days" in actions[0].why


def test_over_the_size_limit_old_runs_go_first_then_thumbnails_and_the_newest_run_stays():
    runs = [run(1, days_ago=3), run(2, days_ago=2), run(3, days_ago=1), run(4, days_ago=None, mb=50)]  # 350 MB
    # 0.2 GB: run1 and run2 go (150 MB left), nothing more needed.
    assert [(a.kind, a.run.name) for a in plan(runs, Policy(gb=0.2), NOW)] == [("delete", "run1"), ("delete", "run2")]
    # 0.145 GB: the newest finished run is not deleted for size; its non-keyframe thumbnails go.
    actions = plan(runs, Policy(gb=0.145), NOW)
    assert [(a.kind, a.run.name) for a in actions] == [("delete", "run1"), ("delete", "run2"), ("thumbnails", "run3")]
    # Far too small a limit: still never the live run.
    assert "run4" not in {a.run.name for a in plan(runs, Policy(gb=0.001), NOW)}


def test_both_limits_age_first_then_size_counting_what_age_removed():
    runs = [run(1, days_ago=40), run(2, days_ago=2), run(3, days_ago=1)]  # 300 MB
    actions = plan(runs, Policy(days=30, gb=0.25), NOW)
    assert [(a.kind, a.run.name) for a in actions] == [("delete", "run1")]  # 200 MB left: under 0.25 GB


def test_a_disk_under_ten_percent_free_is_warned_of(tmp_path):
    from shutil import _ntuple_diskusage

    from encoders.services.recorder.retention import low_disk

    full = low_disk(tmp_path / "runs", lambda p: _ntuple_diskusage(100 * 10**9, 95 * 10**9, 5 * 10**9))
    assert full is not None and "5.0 GB free of 100.0 GB (5%)" in full and "ENCODERS_RETENTION" in full
    assert low_disk(tmp_path, lambda p: _ntuple_diskusage(100 * 10**9, 50 * 10**9, 50 * 10**9)) is None
