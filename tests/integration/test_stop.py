"""`encoders stop` as a real process against a stand-in core (tests/fake_core.py): the totals
printed once the core reports Stopped (a table for people, JSON for programs: every test that
reads the totals reads the JSON), a core that does not report in time, no core at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import zmq

from encoders.shared.messages import Bye, Hello, Stop, Stopped

from ..conftest import free_port
from ..fake_core import FakeCore


@pytest.fixture
def cores(sockets):
    made: list[FakeCore] = []

    def start(stopped: Stopped | None = None, draining: str = "") -> FakeCore:
        made.append(FakeCore(sockets.bind(zmq.ROUTER), roles={"control"}, stopped=stopped, draining=draining))
        return made[-1]

    yield start
    for core in made:
        core.close()


def stop(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "encoders", "stop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def test_the_totals_are_printed_once_the_core_reports_it_has_stopped(cores):
    totals = {
        "cam0": {"published": 1200, "embedded": 1180, "dropped": 15, "skipped": 5, "lost": 0},
        "cam1": {"published": 300, "embedded": 300, "dropped": 0, "skipped": 0, "lost": 0},
    }
    core = cores(stopped=Stopped(totals))  # type: ignore[arg-type]
    done = stop("--pipeline", core.endpoint, "--reason", "maintenance")
    assert done.returncode == 0, done.stderr
    assert [line.split() for line in done.stdout.splitlines()] == [
        ["stream", "published", "embedded", "dropped", "skipped", "lost"],
        ["cam0", "1200", "1180", "15", "5", "0"],
        ["cam1", "300", "300", "0", "0", "0"],
        ["total", "1500", "1480", "15", "5", "0"],
    ]
    assert f"the pipeline at {core.endpoint} has stopped" in done.stderr
    hello, stop_msg, bye = core.messages()
    assert isinstance(hello, Hello) and hello.role == "control"
    assert isinstance(stop_msg, Stop) and stop_msg.reason == "maintenance"
    assert isinstance(bye, Bye)


def test_format_json_prints_the_totals_as_one_object_for_programs(cores):
    totals = {
        "cam0": {"published": 1200, "embedded": 1180, "dropped": 15, "skipped": 5, "lost": 0, "late": 3},
        "cam1": {"published": None, "embedded": 300, "dropped": 0, "skipped": 0, "lost": 0},
    }
    core = cores(stopped=Stopped(totals))  # type: ignore[arg-type]
    done = stop("--pipeline", core.endpoint, "--format", "json")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()  # one line, nothing else on stdout: what it does goes to stderr
    assert json.loads(line) == {"streams": totals}  # every count by its name, whichever a stream has
    assert f"the pipeline at {core.endpoint} has stopped" in done.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "encoders", "stop", "--help"], capture_output=True, text=True, timeout=30
    )
    assert "--format [table|json]" in helped.stdout and "JSON object" in helped.stdout


def test_the_address_comes_from_encoders_core_too(cores):
    core = cores(stopped=Stopped({}))
    done = stop("--format", "json", env={"ENCODERS_CORE": core.endpoint})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"streams": {}}
    (stop_msg,) = [m for m in core.messages() if isinstance(m, Stop)]
    assert stop_msg.reason.startswith("encoders stop from ")  # who asked, by default


def test_a_core_that_does_not_report_in_time_is_exit_1_saying_what_it_waited_for(cores):
    # Welcomes, heartbeats, never reports Stopped: still draining, and says what for.
    core = cores(draining="12 frames in workers' hands")
    start = time.monotonic()
    done = stop("--pipeline", core.endpoint, "--timeout", "2")
    assert done.returncode == 1, done.stderr
    assert 2 <= time.monotonic() - start < 15
    assert "asked the core at" in done.stderr and "waiting for it to drain (at most 2 s)" in done.stderr
    assert "still draining: waiting for 12 frames in workers' hands" in done.stderr  # as the core said it
    assert "has not reported Stopped within 2 s" in done.stderr
    assert "still draining (waiting for 12 frames in workers' hands)" in done.stderr  # and in the last word
    assert not done.stdout and "Traceback" not in done.stderr


def test_no_core_is_exit_2_in_one_line_naming_the_address_and_the_setting():
    nobody = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    done = stop("--pipeline", nobody, env={"ENCODERS_HEARTBEAT_S": "0.5"})
    assert done.returncode == 2
    assert time.monotonic() - start < 15
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"encoders stop: no answer from the core at {nobody} (--pipeline / ENCODERS_CORE) for 2 s")
    bad = stop("--pipeline", "tcp://nonsense")
    assert bad.returncode == 2 and bad.stderr.splitlines() == [
        "encoders stop: cannot connect tcp://nonsense: Invalid argument (addr='tcp://nonsense')"
    ]
