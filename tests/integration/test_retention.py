"""Retention against real rows and folders (issue #15): `encoders prune --dry-run` says and
deletes nothing; the policy, with a clock the test sets, deletes whole old runs (rows and
folder), then thumbnails; a run being recorded is never touched; the recorder's own pruner
does the same on its schedule."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from encoders.services.recorder.retention import Policy, Pruner, prune
from encoders.services.recorder.runlock import RunLock
from encoders.shared.storage.connection import Database
from encoders.shared.storage.frames import FrameRow

NOW = datetime.now(UTC)
THUMB = b"\xff\xd8" + bytes(20_000) + b"\xff\xd9"  # 20 KB a thumbnail


def make_run(db: Database, runs: Path, name: str, ended_days_ago: float | None, frames: int = 20) -> Path:
    """A run as a recorder leaves it: its row (ended that long ago, or open), frames with a
    thumbnail each (every fifth a keyframe), and its folder with config.json and a file."""
    run_id = db.claim_run(name, NOW - timedelta(days=(ended_days_ago or 0) + 1))
    assert run_id is not None
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run": {"id": run_id, "dir": str(folder)}}))
    (folder / "drift.csv").write_bytes(b"x" * 100_000)
    db.update_run(run_id, config={"run": {"id": run_id, "dir": str(folder)}})
    db.ensure_frames(4)
    rng = np.random.default_rng(run_id)
    rows = [
        FrameRow(run_id, "cam0", seq, 1000.0 + seq, 0.9, 0.1, rng.standard_normal(4).astype(np.float32), None, "w0",
                 keyframe=seq % 5 == 0, keyframe_seq=seq - seq % 5, thumbnail=THUMB)
        for seq in range(frames)
    ]  # fmt: skip
    db.write_rows(rows)
    if ended_days_ago is not None:
        db.end_run_if_open(run_id, NOW - timedelta(days=ended_days_ago), {"streams": {}})
    return folder


def counts(db: Database) -> dict[str, tuple[int, int]]:
    """run name -> (its frames, its frames that still have a thumbnail)."""
    return {
        name: (int(n), int(t))
        for name, n, t in db.run(
            lambda conn: conn.execute(
                "SELECT r.name, count(f.seq), count(f.thumbnail) FROM runs r LEFT JOIN frames f ON f.run_id = r.id "
                "GROUP BY r.name"
            ).fetchall()
        )
    }


def test_old_runs_go_whole_a_live_run_never_and_dry_run_deletes_nothing(pg, tmp_path):
    url, runs = pg.new_database(), tmp_path / "runs"
    db = Database(url)
    db.migrate()
    old = make_run(db, runs, "old", ended_days_ago=40)
    recent = make_run(db, runs, "recent", ended_days_ago=2)
    live = make_run(db, runs, "live", ended_days_ago=None)
    lock = RunLock.take(live)  # a recorder is recording it
    assert lock is not None
    try:
        env = {**os.environ, "ENCODERS_DATABASE_URL": url, "ENCODERS_RUNS_DIR": str(runs)}
        said = subprocess.run(
            [sys.executable, "-m", "encoders", "prune", "--dry-run", "--retention-days", "30"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert said.returncode == 0, said.stderr
        assert said.stdout.startswith("would delete run old") and "recent" not in said.stdout
        assert set(counts(db)) == {"old", "recent", "live"} and old.exists()

        # Thirty days on, "recent" is old too; "live" started long ago and is still being recorded.
        later = NOW + timedelta(days=30)
        done = prune(db, runs, Policy(days=30), later)
        assert [line.split(" (")[0] for line in done] == ["delete run old", "delete run recent"]
        assert set(counts(db)) == {"live"} and not old.exists() and not recent.exists()
        assert live.exists() and counts(db)["live"] == (20, 20)
    finally:
        lock.release()
        db.close()


def test_over_the_size_limit_the_oldest_runs_go_then_non_keyframe_thumbnails(pg, tmp_path):
    url, runs = pg.new_database(), tmp_path / "runs"
    db = Database(url)
    db.migrate()
    for i, name in enumerate(["a", "b", "c"]):
        make_run(db, runs, name, ended_days_ago=3 - i)  # each about 0.5 MB: 20 thumbnails, 100 KB of files
    # Room for about one run: a and b go whole, then c loses its non-keyframes' thumbnails.
    done = prune(db, runs, Policy(gb=0.0003), NOW)
    assert [line.split(" (")[0] for line in done] == [
        "delete run a",
        "delete run b",
        "drop the non-keyframe thumbnails of run c",
    ]
    assert counts(db) == {"c": (20, 4)}  # every frame kept; the 4 keyframes keep their thumbnails
    db.close()


def test_the_recorders_pruner_applies_the_policy_and_says_what_it_did(pg, tmp_path, caplog):
    url, runs = pg.new_database(), tmp_path / "runs"
    db = Database(url)
    db.migrate()
    make_run(db, runs, "ancient", ended_days_ago=100)
    make_run(db, runs, "fresh", ended_days_ago=1)
    with caplog.at_level(logging.INFO):
        Pruner(url, runs, Policy(days=30), every=3600, clock=lambda: NOW).once()
    assert set(counts(db)) == {"fresh"}
    assert "retention: delete run ancient" in caplog.text
    db.close()
