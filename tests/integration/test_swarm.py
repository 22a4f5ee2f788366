"""The swarm stack for real (issue #25): `docker stack deploy -c deploy/swarm/stack.yml` on a swarm of
three nodes, against pisim, and a "GPU box" (deploy/compose/worker-box.yml) on another Docker engine.

A machine for each node is what a swarm asks; this one has one kernel and no virtual machines,
so each node is a dockerd in a network namespace of its own (tests/engines.py, tests/hosts.py),
all on one bridge: their own addresses, firewalls, data roots and hostnames, one filesystem and
one kernel. What that does not show: real machines' clocks and MTUs, and (this kernel has
neither IPVS nor ESP) the virtual IPs and the overlay's encryption: the stack uses no virtual IP
(every service is dnsrr), and the test deploys it with the overlay's `encrypted` option taken
out, after checking that the file has it.

The images are built in the host's engine as the compose test builds them (its fixtures: local
base images, the local package indexes), then copied to the nodes with `docker save | docker load`
(what the README says to do without a registry); the nodes keep them in their data roots
(tests/engines.py: DATA_ROOT), so that a warm run copies none. The encoder runs with
ENCODERS_RUNTIME=none (the worker without a model: the same service and protocol, no CPU for
a model on a 2-core machine).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from encoders.shared import keys

from ..conftest import wait_for
from ..engines import Engine, Engines, copy_images, service_tasks
from ..hosts import Hosts
from .test_compose import (  # noqa: F401 - fixtures
    ROOT,
    NetworkState,
    Stack,
    docker_engine,
    local_bases,
    package_index,
    run,
)

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(3600)]

STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yml"
BOX_FILE = ROOT / "deploy" / "compose" / "worker-box.yml"
STACK = "encoders"
SERVICES = ("pisim", "ingest", "metrics", "recorder")  # built as compose builds them (the compose test's too)
PREFIX = "swarm-test/"  # ENCODERS_IMAGE_PREFIX: the images the nodes get, tagged apart from compose's
POSTGRES_IMAGE = "encoders-local/postgres:16"
# The encoder's image with torch's CPU build (about 1 GB, not 6 with CUDA's: what services/Dockerfile
# says to build for the CPU), from this machine's wheels; torchvision's 0.28.0 is the one for torch 2.13.
CPU_TORCH = "torch==2.13.0+cpu torchvision==0.28.0"


@pytest.fixture(scope="module")
def images(local_bases, package_index) -> list[str]:  # noqa: F811
    """The services' images, built in the host's engine (cached there), tagged PREFIX + their name.
    The encoder's is built with a CPU-only torch: the nodes load it in seconds rather than minutes, and
    the disk holds four copies (one per engine) where the CUDA build's would need 25 GB."""
    env = {**os.environ, **local_bases, **package_index, "GPU": "0", "ENCODERS_WEB_TOKEN": "unused"}
    compose = Stack(env).compose
    run(*compose, "build", *SERVICES, env=env, timeout=2400)
    if "PIP_INDEX_URL" in package_index:  # this machine's wheels, served with its indexes
        wheels = package_index["PIP_INDEX_URL"].rsplit("/pypi-more/", 1)[0] + "/wheels/"
        torch = {"TORCH": f"--find-links {wheels} {CPU_TORCH}"}
    else:  # PyTorch's own index of CPU builds
        torch = {"TORCH": "torch torchvision", "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"}
    args = {k: v for k, v in {**local_bases, **package_index}.items() if k.startswith(("PIP_", "BASE_"))}
    build_args = [f"--build-arg={k}={v}" for k, v in {**args, **torch, "EXTRAS": "encoder"}.items()]
    run(
        "docker",
        "build",
        "-q",
        "-f",
        "services/Dockerfile",
        *build_args,
        "-t",
        f"{PREFIX}encoders/encoder",
        ".",
        timeout=2400,
    )
    for service in SERVICES:
        run("docker", "tag", f"encoders/{service}", f"{PREFIX}encoders/{service}")
    return [*(f"{PREFIX}encoders/{s}" for s in (*SERVICES, "encoder")), local_bases["POSTGRES_IMAGE"]]


class Swarm:
    """Three engines in a swarm (node1 the manager, with every label: the core, the database, the
    camera), and the stack's services as Docker reports them."""

    def __init__(self, engines: Engines, tmp: Path) -> None:
        self.engines = engines
        self.tmp = tmp
        self.nodes = [engines.add(f"node{i}") for i in (1, 2, 3)]
        for engine in self.nodes:
            engine.wait_ready()
            engine.docker("volume", "prune", "--force")  # an earlier run's database and runs: not this one's
        self.manager = self.nodes[0]
        m = self.manager
        m.docker(
            "swarm",
            "init",
            f"--advertise-addr={m.host.address}",
            f"--listen-addr={m.host.address}:2377",
            "--default-addr-pool=10.199.0.0/16",  # clear of tests/hosts.py's 10.200-250 networks
            "--dispatcher-heartbeat=2s",  # a node cut off is down within seconds, not 15 s
        )
        token = m.docker("swarm", "join-token", "-q", "worker").strip()
        for node in self.nodes[1:]:
            node.docker(
                "swarm", "join", "--token", token, f"--advertise-addr={node.host.address}", f"{m.host.address}:2377"
            )
        for label in ("encoders.core=true", "encoders.db=true", "encoders.ingest=true"):
            m.docker("node", "update", "--label-add", label, m.name)

    def node_of(self, task: dict) -> Engine:
        return next(n for n in self.nodes if n.name == task["Node"])

    def running(self, service: str) -> list[dict]:
        return [
            t
            for t in service_tasks(self.manager, f"{STACK}_{service}")
            if t["DesiredState"] == "Running" and t["CurrentState"].startswith("Running")
        ]

    def container(self, node: Engine, service: str) -> str:
        ids = node.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={STACK}_{service}").split()
        assert len(ids) == 1, f"{service} on {node.name}: {ids}"
        return ids[0]

    def healthy(self, node: Engine, service: str) -> bool:
        ids = node.docker(
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.swarm.service.name={STACK}_{service}",
            "--filter",
            "health=healthy",
        ).split()
        return len(ids) == 1

    def sql(self, query: str) -> str:
        pg = self.container(self.manager, "postgres")
        return self.manager.docker("exec", pg, "psql", "-U", "encoders", "-tA", "-c", query)

    def rows_by_worker(self) -> dict[str, int]:
        out = self.sql("SELECT worker, count(*) FROM frames GROUP BY worker")
        return {w: int(n) for w, n in (line.split("|") for line in out.split())}

    def rows(self) -> int:
        if "frames" not in self.sql("SELECT tablename FROM pg_tables"):
            return 0
        return int(self.sql("SELECT count(*) FROM frames").strip() or 0)

    def core_log(self) -> str:
        label = f"label=com.docker.swarm.service.name={STACK}_metrics"
        newest = self.manager.docker("ps", "-aq", "--filter", label).split()[0]  # running, or exited after the stop
        command = ["docker", "-H", f"unix://{self.manager.sock}", "logs", newest]
        return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def swarm(images, tmp_path_factory) -> Iterator[Swarm]:
    if os.geteuid() != 0 or shutil.which("nsenter") is None or shutil.which("unshare") is None:
        pytest.fail("the swarm test needs root, nsenter and unshare (util-linux), iproute2 and dockerd")
    logs = tmp_path_factory.mktemp("engines")
    network = NetworkState.now()  # the host's firewall and bridge sysctl, put back after
    hosts = Hosts()
    engines = Engines(hosts, logs)
    try:
        swarm = Swarm(engines, tmp_path_factory.mktemp("swarm"))
        started = time.monotonic()
        copied = copy_images(images, swarm.nodes)
        took = time.monotonic() - started
        print(f"images copied to the engines: {copied or 'none (kept from an earlier run)'} in {took:.0f} s")
        yield swarm
    finally:
        try:
            engines.close()
        finally:
            hosts.close()
            network.restore()


class GpuBox:
    """deploy/compose/worker-box.yml on the host's engine, taken down again after the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env: dict[str, str] | None = None
        compose = Stack({**os.environ, "GPU": "0", "ENCODERS_WEB_TOKEN": "unused"}).compose
        assert compose[-2:] == ["-f", "docker-compose.yml"], compose
        self.compose = [*compose[:-2], "-f", str(BOX_FILE)]

    def up(self, keys_dir: Path, core: str, env: dict[str, str]) -> None:
        # The swarm's core serves the keys it was deployed with (its allowed/ is secrets), so the box
        # takes the worker role's key: core.key and worker.key_secret, copied, readable by uid 1000.
        box_keys = self.tmp / "gpubox-keys"
        box_keys.mkdir(mode=0o700)
        for name in ("core.key", "worker.key_secret"):
            shutil.copy(keys_dir / name, box_keys / name)
        for path in (box_keys, *box_keys.iterdir()):
            os.chown(path, 1000, 1000)
        self.env = {
            **env,
            "ENCODERS_CORE": core,
            "ENCODERS_KEYS_DIR": str(box_keys),
            "ENCODERS_WORKER_ID": "gpubox",
            "COMPOSE_PROJECT_NAME": "encoders-gpubox-test",
        }
        run(*self.compose, "up", "-d", "--no-build", env=self.env, timeout=300)

    def logs(self) -> str:
        if self.env is None:
            return ""
        return run(*self.compose, "logs", "--no-color", "--tail", "40", env=self.env, check=False)

    def down(self) -> None:
        if self.env is not None:
            run(*self.compose, "down", "--volumes", env=self.env, timeout=120, check=False)


@pytest.fixture
def gpu_box(docker_engine, tmp_path) -> Iterator[GpuBox]:  # noqa: F811
    box = GpuBox(tmp_path)
    try:
        yield box
    finally:
        box.down()


def deployable_stack(tmp: Path) -> Path:
    """The stack file as this kernel runs it: without the overlay's encryption (no ESP here), which
    the file must have."""
    stack = yaml.safe_load(STACK_FILE.read_text())
    options = stack["networks"]["encoders"]["driver_opts"]
    assert options.pop("encrypted") == "true"
    out = tmp / "stack.yml"
    out.write_text(yaml.safe_dump(stack))
    return out


def joined(log: str) -> set[str]:
    return set(re.findall(r"worker (\S+) joined: capacity", log))


def left(log: str) -> dict[str, int]:
    """The workers the core counted gone, and the frames each held that it counted lost."""
    return {w: int(n) for w, n in re.findall(r"worker (\S+) left \(.*?\): (\d+) frames it held lost", log)}


def test_the_stack_on_three_nodes_scales_survives_a_lost_node_and_adds_a_gpu_box(swarm, gpu_box, tmp_path):
    started = time.monotonic()
    keys_dir = tmp_path / "keys"
    keys.init(keys_dir)
    env = {
        **os.environ,
        "ENCODERS_KEYS_DIR": str(keys_dir),
        "ENCODERS_IMAGE_PREFIX": PREFIX,
        "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "ENCODERS_RUNTIME": "none",  # the worker without a model (README: Configuration)
        "ENCODERS_WEB_TOKEN": "unused",
        "ENCODERS_WEB_REPLICAS": "0",  # the viewer's image (7 GB) is not copied to the nodes
        "ENCODERS_FPS": "10",
        "ENCODERS_SNAPSHOT_INTERVAL": "10",
        "ENCODERS_EMBEDDING_INTERVAL": "20",
    }
    m = swarm.manager
    m.docker("stack", "deploy", "--resolve-image=never", "-c", str(deployable_stack(tmp_path)), STACK, env=env)
    for service in ("postgres", "metrics", "recorder", "pisim", "ingest"):  # all placed on node1 by its labels
        wait_for(functools.partial(swarm.healthy, m, service), 180, f"{service} healthy on node1", interval=1)
    wait_for(lambda: swarm.rows() >= 20, 180, "20 frames in PostgreSQL", interval=1)
    deployed_s = time.monotonic() - started

    # A GPU box: another Docker host outside the swarm (the host's own engine, where the images were
    # built) runs the worker-only compose file with the core's address (node1's published port, across
    # the bridge) and the worker's keys copied to it, as the README says.
    gpu_box.up(keys_dir, f"tcp://{m.host.address}:5556", env)
    try:
        wait_for(
            lambda: swarm.rows_by_worker().get("gpubox", 0) >= 5, 120, "frames embedded on the GPU box", interval=1
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe box:\n{gpu_box.logs()}\nthe core:\n{swarm.core_log()[-3000:]}") from None

    # Three replicas, spread over the nodes by the swarm; each embeds.
    m.docker("service", "scale", "--detach", f"{STACK}_encoder=3")
    wait_for(lambda: len(swarm.running("encoder")) == 3, 120, "3 encoder tasks running", interval=1)
    workers = {f"{t['Node']}.{t['Name'].rsplit('.', 1)[1]}" for t in swarm.running("encoder")}
    wait_for(lambda: workers <= set(swarm.rows_by_worker()), 120, f"frames from each of {workers}", interval=1)
    on_node3 = [t for t in swarm.running("encoder") if t["Node"] == "swarm-node3"]
    assert on_node3, f"the swarm put no encoder on node3: {swarm.running('encoder')}"

    # node3 cut off (its link down: a pulled cable). The manager counts it down and starts its
    # task on another node; the core counts its worker gone, and what it had in hand lost.
    cut_worker = f"swarm-node3.{on_node3[0]['Name'].rsplit('.', 1)[1]}"
    swarm.engines.hosts.cut(swarm.nodes[2].host)
    wait_for(lambda: cut_worker in left(swarm.core_log()), 60, f"the core to count {cut_worker} gone")
    wait_for(
        lambda: (
            len(swarm.running("encoder")) == 3 and all(t["Node"] != "swarm-node3" for t in swarm.running("encoder"))
        ),
        120,
        "the lost node's encoder rescheduled on the others",
        interval=1,
    )
    rescheduled = {f"{t['Node']}.{t['Name'].rsplit('.', 1)[1]}" for t in swarm.running("encoder")}
    wait_for(lambda: rescheduled <= joined(swarm.core_log()), 120, f"{rescheduled} to join the core")
    seen = swarm.rows()
    wait_for(lambda: swarm.rows() >= seen + 20, 120, "frames stored after the node was lost", interval=1)

    # `encoders stop` through the core, from this machine with the control key (ENCODERS_KEYS: the
    # folder keys init made), at the core node's published port; then the stack removed.
    stop = subprocess.run(
        [
            sys.executable,
            "-m",
            "encoders",
            "stop",
            "--pipeline",
            f"tcp://{m.host.address}:5556",
            "--timeout",
            "120",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "ENCODERS_KEYS": str(keys_dir)},
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    said = json.loads(stop.stdout)["streams"]["cam0"]
    wait_for(lambda: not swarm.running("recorder"), 120, "the recorder to close the run and exit", interval=1)
    recorder_exits = [
        t
        for t in service_tasks(m, f"{STACK}_recorder")
        if t["DesiredState"] == "Shutdown" or t["CurrentState"].startswith("Complete")
    ]
    assert any(t["CurrentState"].startswith("Complete") for t in recorder_exits), recorder_exits
    rows = swarm.rows()
    by_worker = swarm.rows_by_worker()
    gone = left(swarm.core_log())
    summary = json.loads(
        m.docker(
            "run",
            "--rm",
            "-v",
            f"{STACK}_runs:/runs",
            f"{PREFIX}encoders/metrics",
            "sh",
            "-c",
            "cat /runs/*/summary.json",
        )
    )
    m.docker("stack", "rm", STACK)
    wait_for(
        lambda: not m.docker("ps", "-q", "--filter", f"label=com.docker.stack.namespace={STACK}").split(),
        120,
        "the stack's containers on node1 gone",
        interval=1,
    )

    cam0 = summary["streams"]["cam0"]
    frames = cam0["frames"]
    assert summary["run"]["ended_at"] is not None
    assert summary["totals"]["db_rows"] == cam0["db_rows"] == rows == frames["embedded"], json.dumps(summary)[:3000]
    assert frames["published"] == frames["embedded"] + frames["dropped"] + frames["skipped"] + frames["lost"], frames
    assert {k: said[k] for k in ("published", "embedded", "dropped", "skipped", "lost")} == {
        k: frames[k] for k in ("published", "embedded", "dropped", "skipped", "lost")
    }, (said, frames)
    # Lost: what the workers that left held when they went (node3's; the others leave empty-handed at the stop).
    assert frames["lost"] == sum(gone.values()), (frames, gone)
    assert by_worker.get(cut_worker, 0) > 0 and by_worker.get("gpubox", 0) > 0, by_worker
    print(
        f"swarm: deployed and storing in {deployed_s:.0f} s, whole test {time.monotonic() - started:.0f} s; "
        f"{rows} rows by worker {by_worker}; {frames}; {cut_worker} held {gone[cut_worker]} frames when cut"
    )
