"""Docker engines as machines for tests: each dockerd in a network namespace of its own (tests/hosts.py),
with a data root, an exec root, a socket and a hostname of its own, all on one bridge.

What this machine allows for a multi-node Docker Swarm: one kernel, no virtual machines, so each
"machine" is a dockerd in its own network and UTS namespace (it shares the filesystem, the
cgroups and the kernel with the others). Its images stay in a data root that outlives the test
(DATA_ROOT/<name>), as the host engine keeps the compose test's images: the next run loads none
it already has. Everything else (the namespace, the engine, its containers, the swarm) goes at
the end, also when a test fails.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from .hosts import Host, Hosts

DATA_ROOT = Path("/var/lib/encoders-test-swarm")  # images kept between runs
RUN_ROOT = Path("/run/encoders-test-swarm")  # sockets, pids, containerd's state: gone after each run


def docker_cli(*args: str, sock: str | None = None, timeout: float = 120, check: bool = True, **kw) -> str:
    """``docker ARGS`` against the engine at ``sock`` (the host's when None); its stdout."""
    command = ["docker", *(["-H", f"unix://{sock}"] if sock else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout


class Engine:
    """One dockerd in the network namespace of ``host``."""

    def __init__(self, host: Host, log_dir: Path) -> None:
        self.host = host
        self.name = f"swarm-{host.name}"  # its hostname: what `docker node ls` and the tasks' templates show
        self.data = DATA_ROOT / host.name
        self.run = RUN_ROOT / host.name
        self.sock = str(self.run / "docker.sock")
        self.log = log_dir / f"dockerd-{host.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        shutil.rmtree(self.run, ignore_errors=True)  # what a killed run left
        self.run.mkdir(parents=True)
        self.data.mkdir(parents=True, exist_ok=True)
        swarm_state = self.data / "swarm"
        shutil.rmtree(swarm_state, ignore_errors=True)  # a swarm of an earlier run: never rejoined
        dockerd = [
            "dockerd",
            f"--data-root={self.data}",
            f"--exec-root={self.run / 'exec'}",
            f"--pidfile={self.run / 'docker.pid'}",
            f"--host=unix://{self.sock}",
            f"--cgroup-parent=/encoders-test-{self.host.name}",
            "--shutdown-timeout=5",
            "--log-level=warn",
        ]
        # The network namespace only (nsenter --net, not `ip netns exec`, which mounts a /sys of the
        # namespace and hides the cgroups), and a hostname of its own (unshare --uts).
        command = [
            "nsenter",
            f"--net=/var/run/netns/{self.host.netns}",
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.name,
            *dockerd,
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def answers(self) -> bool:
        done = subprocess.run(["docker", "-H", f"unix://{self.sock}", "info"], capture_output=True, check=False)
        return done.returncode == 0

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd of {self.name} exited:\n{self.log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"dockerd of {self.name} did not answer in {timeout} s:\n{self.log.read_text()[-4000:]}"
                )
            time.sleep(0.3)

    def docker(self, *args: str, timeout: float = 120, check: bool = True, **kw) -> str:
        return docker_cli(*args, sock=self.sock, timeout=timeout, check=check, **kw)

    def image_id(self, image: str) -> str | None:
        out = self.docker("image", "inspect", "-f", "{{.Id}}", image, check=False).strip()
        return out or None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Its containers first, so that the engine needs no grace for them.
        ids = self.docker("ps", "-aq", check=False, timeout=30).split() if self.answers() else []
        if ids:
            self.docker("rm", "-f", *ids, check=False, timeout=120)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        """After stop(): the exec root (its containerd's state, the network namespaces' mounts)."""
        netns = self.run / "exec" / "netns"
        if netns.is_dir():  # sandboxes' namespaces left bound by a killed engine
            for ns in netns.iterdir():
                subprocess.run(["umount", "-l", str(ns)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(self.run / "exec")], capture_output=True, check=False)
        shutil.rmtree(self.run, ignore_errors=True)


class Engines:
    """Engines on the bridge of ``hosts``, started together and stopped together."""

    def __init__(self, hosts: Hosts, log_dir: Path) -> None:
        self.hosts = hosts
        self.log_dir = log_dir
        self.engines: list[Engine] = []

    def add(self, name: str) -> Engine:
        engine = Engine(self.hosts.add(name), self.log_dir)
        self.engines.append(engine)
        engine.start()
        return engine

    def close(self) -> None:
        for engine in self.engines:
            try:
                engine.stop()
            finally:
                engine.cleanup()


def copy_images(images: Iterable[str], engines: list[Engine], timeout: float = 1800) -> list[str]:
    """``docker save | docker load`` of each image from the host's engine into every engine that lacks
    that very build (its image id), after removing every other image it holds; the images copied.
    One engine at a time: `docker load` unpacks the whole image into its data root's tmp/ first."""
    wanted = {image: docker_cli("image", "inspect", "-f", "{{.Id}}", image).strip() for image in images}
    for engine in engines:  # earlier builds first, to make room
        held = engine.docker("images", "-q", "--no-trunc").split()
        stale = sorted(set(held) - set(wanted.values()))
        if stale:
            engine.docker("rmi", "--force", *stale, check=False, timeout=300)
    copied = []
    for image, want in wanted.items():
        missing = [e for e in engines if e.image_id(image) != want]
        for engine in missing:
            done = subprocess.run(
                [
                    "bash",
                    "-c",
                    'set -o pipefail; docker save "$1" | docker -H "unix://$2" load -q',
                    "-",
                    image,
                    engine.sock,
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            assert done.returncode == 0, f"docker save {image} | docker load into {engine.name}: {done.stderr[-2000:]}"
        if missing:
            copied.append(image)
    return copied


def service_tasks(manager: Engine, service: str) -> list[dict]:
    """The tasks of a swarm service, as `docker service ps` lists them (JSON lines)."""
    out = manager.docker("service", "ps", "--no-trunc", "--format", "{{json .}}", service, check=False)
    return [json.loads(line) for line in out.splitlines() if line.strip()]
