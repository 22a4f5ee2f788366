"""A viewer exits when the pipeline is stopped (issue #23): `encoders stop --pipeline` against a
real core, with a real camera, ingest and web viewer.

A viewer holds no session with the core (docs/PROTOCOL.md, "Viewers"), so the core's Stop never
reached it and `encoders view --web` ran on after every other service had exited. The core now
publishes the stop on its metrics publisher once it has drained (topic ``stopped/``), and the
viewer exits 0 on it, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from ..conftest import free_port, wait_for

HEARTBEAT_S, MISSES = 1.0, 3  # the defaults, set here so that the bound below is in their unit
HEARTBEAT_TIMEOUT_S = HEARTBEAT_S * MISSES
# The core exits at most a heartbeat timeout after it has reported Stopped (it waits for its
# peers' Bye); the viewer hears the stop when `encoders stop` does. Both are given a few heartbeat
# timeouts to be gone: the process's own teardown on a busy machine, not a wait for anything.
EXIT_WITHIN_TIMEOUTS = 5


def test_encoders_stop_ends_a_web_viewer_too(service, tmp_path):
    env = {"ENCODERS_HEARTBEAT_S": str(HEARTBEAT_S), "ENCODERS_HEARTBEAT_MISSES": str(MISSES)}
    core_at, frames_at, metrics_at = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    core = service(
        "metrics",
        "--core-bind",
        core_at,
        "--frames-bind",
        frames_at,
        "--metrics-bind",
        metrics_at,
        "--state-dir",
        str(tmp_path / "core-state"),
        "--no-recorder",
        env=env,
    )
    camera_port = free_port()
    service("pisim", "--port", str(camera_port), "--fps", "10", "--width", "160", "--height", "120")
    ingest = service(
        "ingest", "--core", core_at, "--stream", f"http://127.0.0.1:{camera_port}/stream.mjpg", "--stream-id", "cam0",
        env=env,
    )  # fmt: skip
    web_port = free_port()
    viewer = service("view", "--core", core_at, "--web", f"127.0.0.1:{web_port}", env={**env, "DISPLAY": ""})
    http = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=10)

    def hears_the_core() -> bool:
        """The viewer has the core's own Stats of cam0: its metrics subscription is up (the stop comes there)."""
        assert viewer.proc.poll() is None, viewer.output()[-3000:]
        try:
            streams = http.get("/api/state").json()["streams"]
        except httpx.HTTPError:
            return False  # not serving yet
        return any(s["stream"] == "cam0" and s["workers"] is not None for s in streams)

    wait_for(hears_the_core, 60, "the viewer to subscribe to the core's publishers")

    done = subprocess.run(
        [sys.executable, "-m", "encoders", "stop", "--pipeline", core_at, "--format", "json", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cam0 = json.loads(done.stdout)["streams"]["cam0"]
    # Every service exits 0: the core, the ingest, and the viewer, which holds no session.
    within = EXIT_WITHIN_TIMEOUTS * HEARTBEAT_TIMEOUT_S
    assert core.wait(within) == 0, core.output()[-3000:]
    assert ingest.wait(within) == 0, ingest.output()[-3000:]
    assert viewer.wait(within) == 0, viewer.output()[-3000:]
    said = viewer.output()
    # What it heard: the totals `encoders stop` printed (no worker here: every frame dropped).
    assert f"the pipeline has stopped (frames embedded/published: cam0 0/{cam0['published']}): exiting" in said, said
    assert cam0["published"] == cam0["dropped"] > 0, cam0
