"""CurveZMQ keys on every link to the core (issue #13): the pipeline runs with them; a process
without a key, or with one the core's allow-list does not hold, receives no frame, takes no
work and gets nothing stored; a capture of the loopback shows neither JPEGs nor field names.
Without keys, a core that binds beyond loopback does not start unless told the network is
trusted, and then says so."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from encoders.shared import keys, zmqio
from encoders.shared.messages import PROTOCOL, Capture, Frame, Hello, MetricsRecord, Welcome

from ..conftest import Service, Sockets, free_port, wait_for
from .pipeline import Pipeline, collect, subscribe

FRAMES = 30


@pytest.fixture
def capture(tmp_path):
    """tcpdump on the loopback: start(ports) -> the bytes it saw once stop() is called."""
    if shutil.which("tcpdump") is None:
        pytest.fail("this test reads the loopback's packets: it needs tcpdump (apt-get install tcpdump)")
    procs: list[subprocess.Popen] = []
    pcap = tmp_path / "lo.pcap"

    def start(ports: list[int]) -> None:
        where = " or ".join(f"port {p}" for p in ports)
        procs.append(
            subprocess.Popen(
                ["tcpdump", "-i", "lo", "-U", "-w", str(pcap), where],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
        wait_for(pcap.exists, 10, "tcpdump to start")
        time.sleep(0.5)  # it opens the file before it listens

    def stop() -> bytes:
        procs[0].send_signal(signal.SIGINT)
        procs[0].wait(10)
        return pcap.read_bytes()

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def key_folder(tmp_path: Path, name: str) -> str:
    folder = tmp_path / name
    keys.init(folder)
    return str(folder)


def role_keys(folder: str, role: str) -> keys.CurveKeys:
    made = keys.client(folder, role)
    assert made is not None
    return made


def stranger_says_hello(sockets: Sockets, core: str, curve: keys.CurveKeys | None) -> bool:
    """Whether a worker with these keys (or none) gets a Welcome within 5 s."""
    sock = sockets.connect(zmq.DEALER, core, curve=curve)
    zmqio.send(sock, Hello("worker", "stranger", PROTOCOL, capacity=8, model="m"))
    return bool(sock.poll(5000)) and isinstance(zmqio.receive(sock)[0], Welcome)


@pytest.mark.timeout(180)
def test_with_keys_only_allowed_services_are_served_and_nothing_travels_in_clear(
    service, tiny_model, tmp_path, sockets, capture
):
    folder = key_folder(tmp_path, "keys")
    others = key_folder(tmp_path, "other-keys")  # a stranger's keys: not on the core's allow-list
    pipeline = Pipeline(service, tiny_model, tmp_path, "", env={"ENCODERS_KEYS": folder})
    capture([pipeline.core_port, pipeline.frames_port, pipeline.metrics_port])
    core = pipeline.start_core("--no-recorder")
    viewer = role_keys(folder, "viewer")
    records = subscribe(sockets, pipeline.metrics_pub, viewer)
    frames_ok = sockets.connect(zmq.SUB, f"tcp://127.0.0.1:{pipeline.frames_port}", subscribe=[b"frame/"], curve=viewer)
    plain_frames = sockets.connect(zmq.SUB, f"tcp://127.0.0.1:{pipeline.frames_port}", subscribe=[b""])
    theirs = role_keys(others, "viewer")
    stranger = keys.CurveKeys(theirs.public, theirs.secret, viewer.server)
    stranger_frames = sockets.connect(
        zmq.SUB, f"tcp://127.0.0.1:{pipeline.frames_port}", subscribe=[b""], curve=stranger
    )
    pipeline.start_worker("w0")
    pipeline.start_ingest(0, pipeline.start_camera(0, fps=30), "--max-frames", str(FRAMES), "--lossless")
    # Strangers knock while the camera runs: none is welcomed, so none is handed a frame.
    assert not stranger_says_hello(sockets, pipeline.core, None)
    assert not stranger_says_hello(sockets, pipeline.core, stranger)
    got = collect(records, until_eos=1)
    embedded = [m for m in got if isinstance(m, MetricsRecord)]
    assert len(embedded) == FRAMES and {r.worker for r in embedded} == {"w0"}  # no frame went elsewhere
    assert frames_ok.poll(1000) and isinstance(zmqio.receive(frames_ok, topic=True)[0], Frame)
    assert not plain_frames.poll(500) and not stranger_frames.poll(500), "a stranger received frames"
    done = pipeline.stop()
    assert done.returncode == 0, done.stderr
    assert core.wait(30) == 0
    seen = capture.stop()
    assert len(seen) > 100_000, "the capture saw the frames go by"
    for clear in (b"JFIF", b"t_capture", b"first_seq", b"capacity"):
        assert clear not in seen, f"{clear!r} travelled in clear"


@pytest.mark.timeout(60)
def test_without_keys_the_same_capture_shows_frames_and_fields(service, tmp_path, sockets, capture):
    """The capture above would see them: here, with plain ZeroMQ, it does."""
    pipeline = Pipeline(service, {}, tmp_path, "")
    capture([pipeline.core_port])
    pipeline.start_core("--no-recorder")
    ingest = sockets.connect(zmq.DEALER, pipeline.core)
    zmqio.send(ingest, Hello("ingest", "cam", PROTOCOL, stream="cam0"))
    assert ingest.poll(5000)
    zmqio.send(ingest, Capture(time.time(), 2, 2, b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 100))
    time.sleep(0.5)
    seen = capture.stop()
    assert b"JFIF" in seen and b"t_capture" in seen


@pytest.mark.timeout(60)
def test_a_core_bound_beyond_loopback_needs_keys_or_says_it_is_insecure(service, tmp_path):
    port = free_port()
    binds = ["--core-bind", f"tcp://*:{port}", "--state-dir", str(tmp_path / "state")]
    refused: Service = service("metrics", *binds)
    assert refused.wait(20) == 2
    out = refused.output()
    assert f"tcp://*:{port} can be reached from other machines" in out
    assert "ENCODERS_KEYS" in out and "ENCODERS_INSECURE=1" in out
    allowed = service("metrics", *binds, env={"ENCODERS_INSECURE": "1"})
    wait_for(lambda: "INSECURE" in allowed.output(), 20, "the warning")
    assert allowed.stop() == 0
    keyed = service("metrics", *binds, env={"ENCODERS_KEYS": key_folder(tmp_path, "keys")})
    wait_for(lambda: "serving the keys of" in keyed.output(), 20, "the core to start with keys")
    assert "INSECURE" not in keyed.output()
    assert keyed.stop() == 0
