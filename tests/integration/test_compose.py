"""`make up` for real: the compose stack built and run in a real Docker engine, against pisim.

What the README's "Running with Docker Compose" section tells a user, run as they would run
it (make up, make down), with the encoder on the CPU. This machine reaches no container
registry, so the test first builds local stand-ins for the two official base images
(docker/local-bases.sh; cached by the engine between runs) and serves this machine's local
package indexes to the image builds: that, and ENCODERS_PRETRAINED=none (no weights can be
downloaded here), is all it adds to what users run.

A Docker engine that is not running is started (dockerd, as root) and stopped again after.
Cold (no images) it takes about 12 minutes on a 2-core machine, warm about 4.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from ..conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "encoders-compose-test"  # its own containers and volumes: a user's stack is left alone
LOCAL_BASES = {
    "BASE_IMAGE": "encoders-local/python:3.11-bookworm",
    "POSTGRES_IMAGE": "encoders-local/postgres:16",
}
LOCAL_INDEXES = Path("/opt")  # this machine's package indexes (pip config list): pypi/ and pypi-more/
INDEX_PORT = 38765
IMAGE_LABEL = "org.opencontainers.image.title=encoders"  # services/Dockerfile's
TORCH = "torch==2.14.1 torchvision==0.29.1"  # what lies in them (Makefile's TORCH_PIN)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]


def run(*args: str, env: dict | None = None, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        said = f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{said}")
    return done.stdout


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory) -> Iterator[None]:
    """A running Docker engine: the one already running, else dockerd started here and stopped after."""
    if shutil.which("docker") is None:
        pytest.fail("no docker command: install Debian's docker.io and docker-compose (.ci/run does)")
    if engine_answers():
        yield
        return
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.fail("no Docker engine runs, and dockerd cannot be started here (it needs root and docker.io)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    network = NetworkState.now()  # what dockerd changes and leaves changed when it stops
    with open(log, "wb") as out:
        daemon = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: engine_answers() or daemon.poll() is not None, 60, "dockerd to answer", interval=0.5)
        assert daemon.poll() is None, f"dockerd exited:\n{log.read_text()[-4000:]}"
        yield
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        network.restore()


BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


class NetworkState:
    """The firewall rules, bridged traffic's filtering and the bridges as they were before dockerd:
    it sets the FORWARD policy to DROP, turns br_netfilter on and leaves docker0, all of which
    outlive it and would cut other tests' bridges (tests/hosts.py) off."""

    def __init__(self, rules: str | None, bridge_nf: str | None, links: set[str]) -> None:
        self.rules, self.bridge_nf, self.links = rules, bridge_nf, links

    @classmethod
    def now(cls) -> NetworkState:
        rules = run("iptables-save") if shutil.which("iptables-save") else None
        bridge_nf = BRIDGE_NF.read_text().strip() if BRIDGE_NF.exists() else None
        return cls(rules, bridge_nf, links())

    def restore(self) -> None:
        if self.rules is not None:
            subprocess.run(["iptables-restore"], input=self.rules, text=True, capture_output=True, check=False)
        if BRIDGE_NF.exists():
            BRIDGE_NF.write_text(self.bridge_nf or "0")
        for link in links() - self.links:
            if link == "docker0" or link.startswith("br-"):  # the engine's bridges (compose's: br-<id>)
                subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)


def links() -> set[str]:
    """This machine's network interfaces, by name."""
    return {line.split(":")[1].strip().split("@")[0] for line in run("ip", "-o", "link").splitlines()}


@pytest.fixture(scope="module")
def local_bases(docker_engine) -> dict[str, str]:
    """The stand-ins for python:3.11-slim-bookworm and pgvector/pgvector:pg16 (built once, kept)."""
    run("docker/local-bases.sh", env={**os.environ, **LOCAL_BASES}, timeout=1200)
    return LOCAL_BASES


@pytest.fixture(scope="module")
def package_index(docker_engine) -> Iterator[dict[str, str]]:
    """pip's settings for the image builds: this machine's local indexes (torch without a
    download of gigabytes), served on the bridge network's gateway, then PyPI."""
    if not (LOCAL_INDEXES / "pypi-more" / "simple" / "torch").is_dir():
        yield {}  # another machine: the builds take everything from PyPI
        return
    # The default bridge's address on this machine, which builds reach (docker0's; 20.10's
    # `network inspect` leaves the gateway out).
    bridge = run("docker", "network", "inspect", "bridge", "-f", '{{index .Options "com.docker.network.bridge.name"}}')
    gateway = run("ip", "-4", "-o", "addr", "show", bridge.strip()).split()[3].split("/")[0]

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    handler = functools.partial(Quiet, directory=str(LOCAL_INDEXES))
    try:  # the same port each run: the index's address is a build argument, and a new one rebuilds every image
        server = ThreadingHTTPServer((gateway, INDEX_PORT), handler)
    except OSError:
        server = ThreadingHTTPServer((gateway, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    index = f"http://{gateway}:{server.server_port}"
    try:
        yield {
            "PIP_INDEX_URL": f"{index}/pypi-more/simple",
            "PIP_EXTRA_INDEX_URL": f"{index}/pypi/simple https://pypi.org/simple",
            "PIP_TRUSTED_HOST": gateway,
            "TORCH": TORCH,
        }
    finally:
        server.shutdown()
        server.server_close()


class Stack:
    """The compose project as `make` drives it, and what can be asked of its containers."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.compose = run("make", "-s", "--no-print-directory", "compose-command", env=env).split()

    def make(self, target: str, *variables: str, timeout: float) -> str:
        return run("make", target, *variables, env=self.env, timeout=timeout)

    def sql(self, query: str) -> str:
        return run(*self.compose, "exec", "-T", "postgres", "psql", "-U", "encoders", "-tA", "-c", query, env=self.env)

    def rows(self) -> int:
        return int(self.sql("SELECT count(*) FROM frames").strip() or 0)

    def shell(self, service: str, command: str) -> str:
        return run(*self.compose, "exec", "-T", service, "sh", "-c", command, env=self.env)

    def container(self, service: str) -> dict:
        ids = run(*self.compose, "ps", "-q", service, env=self.env).split()
        assert len(ids) == 1, f"{service}: {ids}"
        return json.loads(run("docker", "inspect", ids[0]))[0]

    def down_with_volumes(self) -> None:
        run(*self.compose, "down", "--volumes", "--remove-orphans", env=self.env, timeout=300, check=False)


@pytest.fixture(scope="module")
def stack(local_bases, package_index, tmp_path_factory) -> Iterator[Stack]:
    env = {
        **os.environ,
        **local_bases,
        **package_index,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "GPU": "0",  # the CPU override is the plain file: the encoder on the CPU
        "ENCODERS_PRETRAINED": "none",  # ViT-B-32 with random weights: nothing to download
        "ENCODERS_FPS": "4",  # what two CPU cores embed alongside everything else
        "ENCODERS_SNAPSHOT_INTERVAL": "10",
        "ENCODERS_EMBEDDING_INTERVAL": "20",
    }
    stack = Stack(env)
    stack.down_with_volumes()  # what an interrupted run left
    try:
        yield stack
    finally:
        stack.down_with_volumes()
        # The builds that the tags have moved past (gigabytes each time the code changes).
        run("docker", "image", "prune", "--force", "--filter", f"label={IMAGE_LABEL}", check=False)


def web_address(root: Path) -> tuple[str, str]:
    """The web viewer's address and token, as `make up` made and printed them (.env)."""
    values = dict(line.split("=", 1) for line in (root / ".env").read_text().split() if "=" in line)
    return f"http://127.0.0.1:{values.get('ENCODERS_WEB_PORT', '8080')}", values["ENCODERS_WEB_TOKEN"]


def test_make_up_runs_the_pipeline_survives_a_crash_and_make_down_closes_the_run(stack):
    started = time.monotonic()
    out = stack.make("up", timeout=2400)
    built_and_healthy_s = time.monotonic() - started
    assert "web viewer: http://localhost:" in out

    # Every service answered its health check (make up waits for that), and says so.
    for service in ("pisim", "metrics", "ingest", "encoder", "recorder", "web"):
        assert stack.container(service)["State"]["Health"]["Status"] == "healthy", service
    assert stack.container("encoder")["Config"]["Env"].count("ENCODERS_DEVICE=auto") == 1

    # Frames reach PostgreSQL, and the run folder fills in its volume.
    wait_for(lambda: stack.rows() >= 20, 240, "20 frames in PostgreSQL", interval=2)
    run_dir = "/runs/$(ls /runs | grep -v '^\\.' | head -n 1)"
    wait_for(
        lambda: stack.shell("recorder", f"ls {run_dir}/snapshots/*.jpg 2>/dev/null || true").strip(),
        120,
        "drift.csv and a snapshot in the runs volume",
        interval=2,
    )
    files = stack.shell("recorder", f"ls {run_dir}").split()
    assert {"config.json", "drift.csv", "snapshots", "embeddings"} <= set(files), files

    # The web viewer answers on its published port, with the token and only with it, and
    # searches the stack's database (by a stored frame: no text tower needed).
    address, token = web_address(ROOT)
    page = httpx.get(f"{address}/", params={"token": token}, timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{address}/", timeout=10).status_code == 401
    stored = stack.sql("SELECT r.name || ':' || f.seq FROM frames f JOIN runs r ON r.id = f.run_id LIMIT 1").strip()
    found = httpx.get(f"{address}/api/search", params={"token": token, "frame": stored, "k": 3}, timeout=30)
    assert found.status_code == 200, found.text
    assert len(found.json()["results"]) == 3

    # An encoder that crashes (its process killed, as the kernel's OOM killer would) is started
    # again by compose, and the run goes on. (`docker kill` would not show it: Docker takes that
    # for a stop by hand and keeps the container stopped.)
    encoder = stack.container("encoder")
    os.kill(encoder["State"]["Pid"], signal.SIGKILL)
    wait_for(lambda: stack.container("encoder")["RestartCount"] >= 1, 60, "compose to restart the encoder", interval=1)
    wait_for(
        lambda: stack.container("encoder")["State"].get("Health", {}).get("Status") == "healthy",
        180,
        "the restarted encoder to be healthy",
        interval=2,
    )
    seen = stack.rows()
    wait_for(lambda: stack.rows() >= seen + 10, 240, "frames stored after the encoder's restart", interval=2)

    # make down: the recorder writes what it holds and closes the run; its summary agrees
    # with the rows, and every frame the camera gave is accounted for.
    # The stop's totals in the form for programs (encoders stop --format json): one JSON line
    # among make's echo of its commands.
    stopped = stack.make("down", "STOP_FORMAT=json", timeout=300)
    said = [json.loads(line) for line in stopped.splitlines() if line.startswith("{")]
    assert len(said) == 1 and "cam0" in said[0]["streams"], f"make down printed no totals of cam0:\n{stopped}"
    cam0_said = said[0]["streams"]["cam0"]
    run(*stack.compose, "up", "-d", "postgres", env=stack.env, timeout=120)
    ready = [*stack.compose, "exec", "-T", "postgres", "pg_isready"]
    wait_for(lambda: "accepting" in run(*ready, env=stack.env, check=False), 60, "postgres", interval=1)
    rows = stack.rows()
    summary = json.loads(
        run(
            "docker",
            "run",
            "--rm",
            "-v",
            f"{PROJECT}_runs:/runs",
            stack.env["BASE_IMAGE"],
            "sh",
            "-c",
            "cat /runs/*/summary.json",
        )
    )
    cam0 = summary["streams"]["cam0"]
    frames = cam0["frames"]
    assert summary["run"]["ended_at"] is not None
    assert summary["totals"]["db_rows"] == cam0["db_rows"] == rows == frames["embedded"], json.dumps(summary)[:3000]
    accounted = frames["embedded"] + frames["dropped"] + frames["skipped"] + frames["lost"]
    assert frames["published"] == accounted, json.dumps(summary)[:4000]
    said_counts = {k: cam0_said[k] for k in ("published", "embedded")}
    assert said_counts == {k: frames[k] for k in said_counts}, cam0_said  # what the stop said
    print(f"compose: built and healthy in {built_and_healthy_s:.0f} s; {rows} frames stored, {frames}")
