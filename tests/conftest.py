"""Fixtures shared by the whole suite: a small real CLIP model, free ports, service processes."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from encoders.shared import zmqio

REPO = Path(__file__).resolve().parents[1]

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
    return {"ENCODERS_MODEL": str(config), "ENCODERS_PRETRAINED": str(checkpoint), "ENCODERS_DEVICE": "cpu"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A real `python -m encoders ...` process whose output is kept for assertions."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - the process writes to it; close() closes it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "encoders", *args],
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


@pytest.fixture
def service(tmp_path):
    """Start services with service(name, *args, env=...); every one is killed at the end of the test."""
    started: list[Service] = []

    def start(*args: str, env: dict | None = None) -> Service:
        svc = Service(list(args), env or {}, tmp_path / f"{args[0]}-{len(started)}.log")
        started.append(svc)
        return svc

    start.started = started
    yield start
    for svc in started:
        svc.close()


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------------------------------
# A real X server for the tests that look at windows as a person would.

INSTALL_HINT = "the display tests need Xvfb and xdotool: apt-get install -y xvfb xdotool"


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
# ZeroMQ publishers standing in for ingest and metrics.


@pytest.fixture
def publishers():
    """The PUB sockets ingest and metrics would bind: (frames socket, metrics socket)."""
    ctx = zmq.Context()
    frames = zmqio.open_socket(ctx, zmq.PUB, "tcp://127.0.0.1:0", bind=True, linger=0)
    metrics = zmqio.open_socket(ctx, zmq.PUB, "tcp://127.0.0.1:0", bind=True, linger=0)
    yield frames, metrics
    frames.close(0)
    metrics.close(0)
    ctx.term()


def endpoint(sock: zmq.Socket) -> str:
    return sock.getsockopt(zmq.LAST_ENDPOINT).decode()
