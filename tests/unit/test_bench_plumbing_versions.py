"""Which workers the plumbing benchmark gives a version of the code (benchmarks/bench_plumbing.py):
`encoders encode --runtime none` where its code has it, else the stand-in that speaks its protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_plumbing import REPO, has_none_runtime


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
