"""A run has one owner: its name claimed on disk and in the database together, config.json, summary.json."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from encoders.services.recorder.run import RecordedRun, RunNameTaken, run_dir_candidates
from encoders.services.recorder.summary import summarise
from encoders.shared.storage.connection import Database


class RunsTable(Database):
    """Stands in for the database's runs table (no server: only what a run claims and updates): names are unique."""

    def __init__(self, taken=()):
        self.names = dict.fromkeys(taken, 0)
        self.updates: list[tuple[int, dict]] = []

    def claim_run(self, name, started_at):
        if name in self.names:
            return None
        self.names[name] = len(self.names) + 1
        return self.names[name]

    def update_run(self, run_id, **fields):
        self.updates.append((run_id, fields))


NOW = datetime(2026, 1, 7, 14, 30, 22, tzinfo=UTC)
BASE = NOW.astimezone().strftime("%Y%m%d_%H%M%S")


def stream_summary(records, published=None):
    frames = {"published": published, "embedded": records, "dropped": 0, "skipped": 0, "lost": 0, "late": 0}
    return {"stream": "x", "frames": frames, "records": records, "snapshots": 1, "npz_batches": 1, "db_rows": records}


def test_candidate_names_are_the_time_then_a_suffix(tmp_path):
    gen = run_dir_candidates(tmp_path, datetime(2026, 1, 7, 14, 30, 22))
    assert [next(gen).name for _ in range(3)] == ["20260107_143022", "20260107_143022_1", "20260107_143022_2"]


def test_a_name_taken_on_disk_or_in_the_database_is_skipped_and_both_agree(tmp_path):
    db = RunsTable(taken=[BASE, f"{BASE}_1"])  # recorded under another runs folder
    (tmp_path / f"{BASE}_2").mkdir()  # another run of this folder
    run = RecordedRun.claim(db, runs_dir=tmp_path, now=NOW)
    assert run.name == run.dir.name == f"{BASE}_3" and db.names[run.name] == run.id
    # The folders tried and given up are not left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{BASE}_2", f"{BASE}_3"]
    second = RecordedRun.claim(db, runs_dir=tmp_path, now=NOW)
    assert second.name == f"{BASE}_4"
    config = json.loads((run.dir / "config.json").read_text())
    assert config["run"]["name"] == run.name and config["run"]["id"] == run.id
    assert db.updates[0] == (run.id, {"config": config})


def test_a_given_run_folder_is_used_under_its_own_name_or_not_at_all(tmp_path):
    db = RunsTable(taken=["taken"])
    run = RecordedRun.claim(db, runs_dir=tmp_path, run_dir=tmp_path / "mine", now=NOW)
    assert run.dir == tmp_path / "mine" and run.name == "mine"
    (run.dir / "drift.csv").write_text("timestamp,frame,similarity,drift\n")
    with pytest.raises(RunNameTaken, match="already holds a run"):
        RecordedRun.claim(db, runs_dir=tmp_path, run_dir=run.dir, now=NOW)
    # No renaming of the database's row behind the caller's back: the name is refused.
    with pytest.raises(RunNameTaken, match="database already has a run named 'taken'"):
        RecordedRun.claim(db, runs_dir=tmp_path, run_dir=tmp_path / "taken", now=NOW)
    assert not (tmp_path / "taken").exists()


def test_config_json_follows_the_model_and_the_streams(tmp_path):
    run = RecordedRun.claim(RunsTable(), runs_dir=tmp_path, settings={"fps": 1}, pipeline={"x": 1}, now=NOW)
    run.set_model("ViT-B-32/openai", 512)
    run.add_stream("cam0", run.dir)
    (run.dir / "cam1").mkdir()
    run.add_stream("cam1", run.dir / "cam1")
    config = json.loads((run.dir / "config.json").read_text())
    assert config["model"] == {"name": "ViT-B-32/openai", "dim": 512}
    assert config["streams"] == {"cam0": ".", "cam1": "cam1"}
    assert config["recorder"] == {"fps": 1} and config["pipeline"] == {"x": 1}
    own = json.loads((run.dir / "cam1" / "config.json").read_text())
    assert own["stream"] == "cam1" and own["streams"] == {"cam1": "."}


@pytest.mark.parametrize("cameras", [1, 3])
def test_summary_json_has_one_shape_for_one_camera_or_several(tmp_path, cameras):
    db = RunsTable()
    run = RecordedRun.claim(db, runs_dir=tmp_path, now=NOW)
    names = [f"cam{i}" for i in range(cameras)]
    for i, name in enumerate(names):
        folder = run.dir if i == 0 else run.dir / name
        folder.mkdir(exist_ok=True)
        run.add_stream(name, folder)
    summary = run.finish({"db_rows": 10 * cameras}, {n: stream_summary(10, published=12) for n in names})
    assert set(summary) == {"run", "streams", "totals"}
    assert sorted(summary["streams"]) == names
    assert summary["totals"]["records"] == 10 * cameras and summary["totals"]["frames"]["published"] == 12 * cameras
    assert summary["streams"]["cam0"]["folder"] == "."
    assert summary["run"]["name"] == run.name and summary["run"]["db_rows"] == 10 * cameras
    assert json.loads((run.dir / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))
    for name in names[1:]:
        own = json.loads((run.dir / name / "summary.json").read_text())
        assert set(own) == {"run", "streams", "totals"} and list(own["streams"]) == [name]
        assert own["streams"][name]["folder"] == name and own["totals"]["records"] == 10
    run_id, fields = db.updates[-1]
    assert run_id == run.id and fields["summary"] == summary and fields["ended_at"] is not None


def test_a_run_that_recorded_nothing_says_so():
    totals = summarise({"name": "x"}, {})["totals"]
    assert totals["records"] == 0 and totals["frames"]["embedded"] == 0 and totals["frames"]["published"] is None
