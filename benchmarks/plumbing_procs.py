"""The plumbing benchmark's processes (plumbing_run.py): each started with its log, watched, ended;
the environment of a version's processes; the benchmark's own subscription to the records."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import zmq

from encoders.shared.keys import client
from encoders.shared.messages import Records as RecordBatch
from encoders.shared.messages import decode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows(header: bytes) -> int:
    """Records a message on the metrics publisher carries: a Records' rows (protocol 3, and the
    floor's), or one (a MetricsRecord of d031ce1's protocol 2)."""
    try:
        head = msgpack.unpackb(header, raw=False)
    except Exception:  # not msgpack: not a batch
        return 1
    return head["n"] if isinstance(head, dict) and head.get("k") == "records" else 1


def record_times(parts: list[zmq.Frame]) -> list[tuple[float, float, float]]:
    """(t_capture, t_encoded, t_metrics) of each record a message on the metrics publisher carries: a
    protocol-2 MetricsRecord's header fields, or a protocol-3 Records' columns (decoded by this
    commit's code)."""
    head = msgpack.unpackb(parts[1].bytes, raw=False)
    if head.get("k") != "records":
        return [(float(head["t_capture"]), float(head["t_encoded"]), float(head["t_metrics"]))]
    batch = decode([p.bytes for p in parts], with_topic=True)
    if not isinstance(batch, RecordBatch):
        raise TypeError(f"a {type(batch).__name__} on a metrics topic")
    c = batch.columns
    return list(zip(c["t_capture"].tolist(), c["t_encoded"].tolist(), c["t_metrics"].tolist(), strict=True))


# The parts of a record's latency after its whole (``Records.latencies``), by the times it carries.
LATENCY_PARTS = ("capture_to_encoded", "encoded_to_metrics", "metrics_to_arrival")


class Records(threading.Thread):
    """The benchmark's subscription to the metrics publisher: records counted, each stream's end read.

    ``latency``: each record's latency too, from its frame's capture (the ingest's clock) to its
    arrival here (this process's ``time.time()``; one machine, one clock), in ``latencies`` with its
    parts: capture to the worker's ``t_encoded``, that to the core's ``t_metrics``, that to the
    arrival. The records are decoded, which at full speed would take this process a share of the
    CPU it measures: only at a camera's rate."""

    def __init__(self, ctx: zmq.Context, endpoint: str, keys: Path | None, *, latency: bool = False) -> None:
        super().__init__(name="records", daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        curve = client(str(keys), "viewer") if keys else None
        if curve is not None:
            curve.apply(self.sock)
        for topic in (b"metrics/", b"eos/"):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)
        self.count = 0
        self.streams: set[bytes] = set()  # the streams records came from
        self.ends: dict[str, dict] = {}  # stream -> its counts
        self.latency = latency
        # Seconds, record by record as they came: (capture to arrival, to encoded, encoded to metrics,
        # metrics to arrival).
        self.latencies: list[tuple[float, float, float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if not self.sock.poll(50):
                continue
            parts = self.sock.recv_multipart(copy=False)
            topic = parts[0].bytes
            if topic.startswith(b"metrics/"):
                if self.latency:
                    arrived = time.time()
                    self.latencies.extend((arrived - c, e - c, m - e, arrived - m) for c, e, m in record_times(parts))
                self.count += rows(parts[1].bytes)
                if topic not in self.streams:
                    self.streams.add(topic)
            elif topic.startswith(b"eos/"):
                header = msgpack.unpackb(parts[1].bytes, raw=False)
                self.ends[header["stream"]] = dict(header.get("counts") or {})
        self.sock.close(linger=0)


@dataclass
class Run:
    """The processes of one measurement, their logs, and what to do with them."""

    folder: Path
    env: dict[str, str]
    procs: dict[str, list[subprocess.Popen]] = field(default_factory=dict)  # group -> processes
    logs: list[Path] = field(default_factory=list)

    def start(self, group: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.folder / f"{group}-{len(self.procs.get(group, []))}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *args], env=env or self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder
            )
        self.procs.setdefault(group, []).append(proc)
        return proc

    def pids(self) -> dict[str, list[int]]:
        return {group: [p.pid for p in procs] for group, procs in self.procs.items()}

    def check_alive(self) -> None:
        for group, procs in self.procs.items():
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{group} (pid {p.pid}) exited with {p.returncode}:\n{self.tails()}")

    def tails(self, n: int = 1500) -> str:
        return "\n".join(
            f"--- {log.name}:\n{log.read_text(errors='replace')[-n:]}" for log in self.logs if log.exists()
        )

    def end(self, timeout: float = 30.0) -> list[str]:
        """Wait for every process to exit (SIGTERM, then kill, past ``timeout``); the ones that did not exit 0."""
        deadline = time.monotonic() + timeout
        bad = []
        for group, procs in self.procs.items():
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                if p.returncode not in (0, -signal.SIGTERM):
                    bad.append(f"{group} exited {p.returncode}")
        return bad

    def kill(self) -> None:
        for procs in self.procs.values():
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def clean_env(src: Path, keys: Path | None) -> dict[str, str]:
    """This environment without ENCODERS_* and PYTHONPATH, then the version's code and keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCODERS_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(src)
    env["ENCODERS_PROMETHEUS_PORT"] = "0"  # any free port: nothing here scrapes them
    if keys is not None:
        env["ENCODERS_KEYS"] = str(keys)
    return env


def wait(condition: Callable[[], object], timeout: float, what: str, run: Run, *, alive: bool = True) -> None:
    """Until ``condition()``; RuntimeError past ``timeout``, or (``alive``) when a process of ``run`` exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if alive:
            run.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{run.tails()}")
        time.sleep(0.05)
