"""The package as pip installs it: a regular (not editable) install works from any folder.

Nothing at the repository root may shadow the installed package: the all-in-one command
starts its children with `python -m encoders` from wherever it was started, the
repository root included.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_regular_install_runs_from_the_repository_root(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = wheels.glob("encoders-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # The linked folders are packaged as real files, with the web viewer's page.
    assert {
        "encoders/cli.py",
        "encoders/shared/messages.py",
        "encoders/services/ingest/main.py",
        "encoders/services/viewer/static/index.html",
    } <= names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    # PYTHONPATH comes after the current folder on sys.path: a folder named `encoders` at the
    # repository root would be imported instead of the installed package, and fail.
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import encoders.shared.messages as m; print(m.__file__)"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(target)
    helped = subprocess.run(
        [sys.executable, "-m", "encoders", "ingest", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0, helped.stderr
    assert "ENCODERS_STREAM" in helped.stdout
