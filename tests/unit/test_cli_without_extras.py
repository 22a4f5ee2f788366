"""The `encoders` command starts in every image, each of which has only its service's extras.

Every command's --help (and so the command-line module and every settings class) with none of
the optional packages importable: an import of psycopg at the top of a module the CLI reads
once stopped every container but the recorder's (found by the compose test).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from encoders.cli import cli

OPTIONAL = [
    *("psycopg", "pgvector", "pgserver"),  # the recorder's and search's
    *("torch", "open_clip"),  # the encoder's
    *("cv2", "matplotlib", "aiohttp"),  # the viewer's
    *("httpx", "paho", "PIL"),  # ingest's, the recorder's
]
RUN_WITHOUT = f"""
import runpy, sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # import fails, as where the package is not installed
sys.argv = ["encoders", *sys.argv[1:]]
runpy.run_module("encoders", run_name="__main__")
"""


@pytest.mark.parametrize("command", ["metrics", "ingest", "encode", "record", "view", "pisim", "health", "keys"])
def test_every_service_command_starts_without_the_optional_packages(command):
    assert command in cli.commands
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, command, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Usage: encoders" in done.stdout
