"""Fixtures shared by the whole suite: a small real CLIP model, free ports, ZeroMQ sockets, service processes;
and the property-based tests' profiles."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from hypothesis import settings

from encoders.shared import zmqio
from encoders.shared.messages import Message

REPO = Path(__file__).resolve().parents[1]

# Property-based tests (the wire format and its consumers): a few seconds in `make test`;
# `make fuzz` (HYPOTHESIS_PROFILE=fuzz) hunts far longer. No deadline: a busy machine is no bug.
# Services started by tests serve their Prometheus metrics on any free port: several of one kind
# run at once here, and a user's pipeline may hold the usual ports.
os.environ.setdefault("ENCODERS_PROMETHEUS_PORT", "0")
settings.register_profile("quick", max_examples=200, deadline=None)
settings.register_profile("fuzz", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

# A real open_clip architecture, just small: the same loading code as ViT-B-32, in a second.
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict:
    """ENCODERS_* variables for a tiny CLIP model config and a checkpoint written here."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    checkpoint = folder / "tiny-clip.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return {
        "ENCODERS_MODEL": str(config),
        "ENCODERS_PRETRAINED": str(checkpoint),
        "ENCODERS_DEVICE": "cpu",
        # The exports of the onnx and openvino runtimes (ENCODERS_RUNTIME=auto takes one) stay
        # in the test's folder, not the user's cache.
        "ENCODERS_MODEL_CACHE": str(folder / "model-cache"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A real `python -m encoders ...` process whose output is kept for assertions."""

    def __init__(self, args: list[str], env: dict, log_path: Path, host: str | None = None):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - the process writes to it; close() closes it
        on_host = ["ip", "netns", "exec", host] if host else []  # another host: tests/hosts.py
        self.proc = subprocess.Popen(
            [*on_host, sys.executable, "-m", "encoders", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"`encoders {' '.join(self.args)}` did not exit in {timeout} s:\n{self.output()[-3000:]}"
            ) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Services:
    """``service(name, *args, env=...)`` starts a service; ``service.started`` lists those started."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Service] = []

    def __call__(self, *args: str, env: dict | None = None, host: str | None = None) -> Service:
        """``host``: the network namespace to run it in (tests/hosts.py), this one if None."""
        svc = Service(list(args), env or {}, self.folder / f"{args[0]}-{len(self.started)}.log", host)
        self.started.append(svc)
        return svc

    def close(self) -> None:
        for svc in self.started:
            svc.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Services]:
    """Start services with service(name, *args, env=...); every one is killed at the end of the test."""
    services = Services(tmp_path)
    yield services
    services.close()


T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``condition`` until it returns something true, and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)  # the poll interval
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------------------------------
# What some tests need beyond Python and this checkout: root, a system tool or service. Each such
# test carries a marker (registered in pyproject.toml), so that `pytest -m "not docker"` leaves
# out what a machine cannot run; `make test` runs them all, and a tool that is missing fails its
# tests, never skips them. The fixture that brings the thing up names the marker its tests must
# carry: a test that uses it unmarked is an error at collection, so that no deselection meets it.

NEEDS = {
    "display": "display",  # conftest.py: Xvfb and xdotool
    "browser": "browser",  # test_viewer_browser.py: Chromium and its driver
    "hosts": "netns",  # tests/hosts.py: network namespaces (root, iproute2)
    "db_host": "netns",  # test_storage_liveness.py: the same
    "docker_engine": "docker",  # test_compose.py: a Docker engine, started as root if none runs
    "capture": "tcpdump",  # test_keys.py: the loopback's packets (root, tcpdump)
    "broker": "mqtt",  # test_notify.py: a Mosquitto broker
    "small_disk": "tmpfs",  # test_all_in_one.py: a disk of its own to fill (root, to mount it)
    "blackhole": "firewall",  # test_dead_link.py: a port's packets dropped (root, iptables)
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects: every test is looked at
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        f"{item.nodeid} uses the fixture {fixture} but is not marked @pytest.mark.{mark}"
        for item in items
        for fixture, mark in NEEDS.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(mark) is None
    ]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


# ---------------------------------------------------------------------------------------
# A real X server for the tests that look at windows as a person would.

INSTALL_HINT = "the display tests need Xvfb and xdotool: apt-get install -y xvfb xdotool"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl as a user would."""
    need("openssl")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: {INSTALL_HINT}")
    return path


@pytest.fixture(scope="module")
def display():
    """A private X server on a free display number (Xvfb picks it and tells us through a pipe)."""
    xvfb = need("Xvfb")
    need("xdotool")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", "1280x1024x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 15)
        number = os.read(read_end, 64).decode().strip() if ready else ""
        if not number.isdigit():
            pytest.fail(f"Xvfb did not start (exit code {proc.poll()})")
        yield f":{number}"
    finally:
        os.close(read_end)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------
# ZeroMQ sockets: made through one fixture, closed with linger 0 whatever the test did.


class Sockets:
    """The ZeroMQ sockets of one test, on a context of its own (the ``sockets`` fixture).

    Modelled on pyzmq's own test fixtures: every socket made here has linger 0, and send and
    receive time limits, so that a broken test fails instead of hanging; at teardown each
    one is closed with linger 0 and the context is terminated, with a time limit too: a
    socket the code under test left open on ``ctx`` is an error, not a hang.
    """

    TIMEOUT_MS = 10_000  # the longest a blocking send or receive on a test's socket waits
    TERM_TIMEOUT_S = 10.0

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.made: list[zmq.Socket] = []

    def socket(self, kind: int) -> zmq.Socket:
        """A socket neither bound nor connected, for a test that sets it up itself."""
        return self._track(self.ctx.socket(kind))

    def bind(self, kind: int, endpoints: str | Iterable[str] = "tcp://127.0.0.1:0", **options: Any) -> zmq.Socket:
        """A socket bound as a service binds it (zmqio.open_socket's options); by default to a
        port the system picks: ``endpoint(sock)`` says which."""
        return self._track(zmqio.open_socket(self.ctx, kind, endpoints, bind=True, linger=0, **options))

    def connect(self, kind: int, endpoints: str | Iterable[str], **options: Any) -> zmq.Socket:
        """A socket connected as a service connects it (zmqio.open_socket's options)."""
        return self._track(zmqio.open_socket(self.ctx, kind, endpoints, bind=False, linger=0, **options))

    def adopt(self, *socks: zmq.Socket) -> None:
        """Sockets the code under test made on ``ctx`` for the test to own: closed at the end too."""
        self.made.extend(socks)

    def _track(self, sock: zmq.Socket) -> zmq.Socket:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self.TIMEOUT_MS)
        sock.setsockopt(zmq.SNDTIMEO, self.TIMEOUT_MS)
        self.made.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.made:
            sock.close(linger=0)
        self.made.clear()
        # As pyzmq's term_context: term() in a thread, so that a socket left open fails the test.
        term = threading.Thread(target=self.ctx.term, daemon=True)
        term.start()
        term.join(self.TERM_TIMEOUT_S)
        if term.is_alive():
            raise AssertionError(
                f"the ZeroMQ context did not terminate in {self.TERM_TIMEOUT_S:g} s: "
                "the code under test left a socket open on it"
            )


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    """Make the test's ZeroMQ sockets with sockets.bind / connect / socket (``sockets.ctx`` for the
    code under test); every one is closed with linger 0 at the end, pass or fail."""
    made = Sockets()
    yield made
    made.close()


def endpoint(sock: zmq.Socket) -> str:
    """The address a socket bound last, e.g. tcp://127.0.0.1:41234 for a bind to port 0."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def receive(sock: zmq.Socket, timeout: float = 5.0, *, topic: bool = False) -> Message:
    """The next message on ``sock``, which must come within ``timeout`` s and decode."""
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"nothing received within {timeout} s")
    msg, _ = zmqio.receive(sock, topic=topic)
    assert msg is not None, "a message that does not decode"
    return msg


def spoil(msg: Message, **changes: Any) -> list[bytes]:
    """A message's wire parts with header fields changed as a hostile peer would (a text where a
    number goes, a NaN, a seq of 10**18): what ``encode`` would never produce."""
    import msgpack

    from encoders.shared import messages

    parts = [bytes(p) for p in messages.encode(msg)]
    header = msgpack.unpackb(parts[0], raw=False)
    header.update(changes)
    parts[0] = msgpack.packb(header, use_bin_type=True)
    return parts


@pytest.fixture
def publishers(sockets: Sockets) -> tuple[zmq.Socket, zmq.Socket]:
    """The PUB sockets ingest and metrics would bind: (frames socket, metrics socket)."""
    return sockets.bind(zmq.PUB), sockets.bind(zmq.PUB)
