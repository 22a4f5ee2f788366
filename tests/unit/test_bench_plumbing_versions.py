"""Which workers the plumbing benchmark gives a version of the code (benchmarks/bench_plumbing.py):
`encoders encode --runtime none` where its code has it, else the stand-in that speaks its protocol; the
real encoder for BENCH_PLUMBING_WORKERS=model. Which cases it runs, and where a version's code comes
from on a machine without the history (a GPU box: benchmarks/gpu/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_plumbing import CASES, REPO, base_worktree, chosen, has_none_runtime, this_commit
from benchmarks.plumbing_run import Version, worker_args, worker_kind


def version(tmp_path: Path, config: str) -> Path:
    (tmp_path / "services" / "encoder").mkdir(parents=True)
    (tmp_path / "services" / "encoder" / "config.py").write_text(config)
    return tmp_path


def test_a_version_runs_none_workers_where_its_code_has_them(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_PLUMBING_WORKERS", raising=False)
    assert has_none_runtime(REPO)  # this commit's
    assert not has_none_runtime(version(tmp_path / "d031ce1", 'choices=("auto", "torch")'))  # the stand-in's
    between = version(tmp_path / "between", 'choices=("auto", "none")')  # runtime none, not NONE_DECODE
    assert has_none_runtime(between)
    monkeypatch.setenv("BENCH_PLUMBING_WORKERS", "light")
    assert has_none_runtime(REPO)
    with pytest.raises(SystemExit, match="ENCODERS_NONE_DECODE"):
        has_none_runtime(between)


def test_each_kind_of_worker_is_started_in_the_version_s_own_words(tmp_path, monkeypatch):
    this = Version("this", REPO / "src", tmp_path, none_runtime=True)
    old = Version("d031ce1", tmp_path / "src", tmp_path, none_runtime=False)
    ready = tmp_path / "w0.ready"
    monkeypatch.setenv("BENCH_PLUMBING_WORKERS", "decode")
    assert worker_args(this, "w0", ready)[2:5] == ["encode", "--runtime", "none"]
    assert "--no-none-decode" not in worker_args(this, "w0", ready)
    assert worker_args(old, "w0", ready)[0].endswith("plumbing_standin.py")
    monkeypatch.setenv("BENCH_PLUMBING_WORKERS", "light")
    assert "--no-none-decode" in worker_args(this, "w0", ready) and "--light" in worker_args(old, "w0", ready)
    # model: every version's own encoder, ViT-B-32 with random weights (no download), told when it is ready.
    monkeypatch.setenv("BENCH_PLUMBING_WORKERS", "model")
    for v in (this, old):
        args = worker_args(v, "w1", ready)
        assert args[:3] == ["-m", "encoders", "encode"] and "--runtime" not in args
        assert args[args.index("--model") + 1] == "ViT-B-32" and args[args.index("--pretrained") + 1] == "none"
        assert args[args.index("--ready-file") + 1] == str(ready) and args[args.index("--worker-id") + 1] == "w1"
    monkeypatch.setenv("BENCH_PLUMBING_WORKERS", "gpu")
    with pytest.raises(SystemExit, match="decode, light, model"):
        worker_kind()


def test_cases_are_chosen_by_any_of_several_parts_of_their_names():
    names = [c.name for c in chosen(CASES, "640x480, 1 camera, keys on|30 frames/s")]
    assert names == [
        "640x480, 1 camera, keys on",
        "640x480, 1 camera, 30 frames/s, keys on",
        "640x480, 8 cameras, 30 frames/s, keys on",
    ]
    assert chosen(CASES, "") == CASES
    with pytest.raises(SystemExit, match="names no case"):
        chosen(CASES, "4K")


def test_a_base_given_as_a_folder_is_used_as_it_is_and_a_copy_without_history_is_named_by_the_setting(
    tmp_path, monkeypatch
):
    # A GPU box gets the working tree without .git: the base's tree comes exported (benchmarks/gpu/prepare.sh).
    (tmp_path / "d031ce1" / "src" / "encoders").mkdir(parents=True)
    with base_worktree(str(tmp_path / "d031ce1")) as tree:
        assert tree == tmp_path / "d031ce1"
    assert (tmp_path / "d031ce1" / "src" / "encoders").is_dir()  # not removed: it is not the benchmark's
    monkeypatch.setenv("BENCH_PLUMBING_CODE", "9eb9e7b (with changes not committed)")
    copy = tmp_path / "copy"
    copy.mkdir()
    assert this_commit(copy) == ("9eb9e7b (with changes not committed)", False)
    assert this_commit(REPO)[0] != "9eb9e7b (with changes not committed)"  # a checkout says its own
