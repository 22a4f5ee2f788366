"""A whole pipeline of real processes, as separate services run it: one core, the recorder, workers,
cameras (pisim) and their ingests, every one given the core's address only (docs/PROTOCOL.md).

For the tests that watch the services together (tests/integration/test_pipeline_e2e.py,
test_restarts.py): start it, watch its records on the metrics publisher, kill and restart any
service, and stop it the way an operator does (`encoders stop`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import zmq

from encoders.shared import zmqio
from encoders.shared.keys import CurveKeys
from encoders.shared.messages import EndOfStream, FrameCounts, Message, MetricsRecord, StreamStart, rows_of

from ..conftest import Service, Services, Sockets, free_port, wait_for
from ..hosts import Host

JSON = ("--format", "json")  # `encoders stop`'s totals for programs: ``totals`` reads them


@dataclass
class Pipeline:
    """The services of one pipeline; ``start_*`` methods start (or start again) one of them."""

    service: Services
    tiny_model: dict
    folder: Path
    database: str
    core_port: int = field(default_factory=free_port)
    frames_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    max_wait: float = 10.0  # the default: a vanished worker costs its frames at once, not after this
    stream_dirs: bool = False
    run_dir: Path | None = None
    # On several hosts (tests/hosts.py): the core's host, whose address every service is given.
    core_host: Host | None = None
    env: dict[str, str] = field(default_factory=dict)  # for every service: ENCODERS_KEYS, say

    @property
    def address(self) -> str:
        return self.core_host.address if self.core_host else "127.0.0.1"

    @property
    def core(self) -> str:
        return f"tcp://{self.address}:{self.core_port}"

    @property
    def metrics_pub(self) -> str:
        return f"tcp://{self.address}:{self.metrics_port}"

    def start_core(self, *extra: str) -> Service:
        bind = "*" if self.core_host else "127.0.0.1"  # another host: every interface, as a user would
        return self.service(
            "metrics",
            "--core-bind",
            f"tcp://{bind}:{self.core_port}",
            "--frames-bind",
            f"tcp://{bind}:{self.frames_port}",
            "--metrics-bind",
            f"tcp://{bind}:{self.metrics_port}",
            "--state-dir",
            str(self.folder / "core-state"),
            "--max-wait",
            str(self.max_wait),
            *extra,
            env=self.env,
            host=self.netns(self.core_host),
        )

    @staticmethod
    def netns(host: Host | None) -> str | None:
        return host.netns if host else None

    def start_recorder(self, *extra: str, again: bool = False) -> Service:
        """The recorder; ``again``: started after one was killed, it takes its run from the core's Welcome."""
        self.run_dir = self.run_dir or self.folder / self.folder.name  # names are unique in the database
        return self.service(
            "record",
            "--core",
            self.core,
            "--database-url",
            self.database,
            "--runs-dir",
            str(self.folder / "runs"),
            *([] if again else ["--run-dir", str(self.run_dir)]),
            "--snapshot-interval",
            "0.5",
            "--embedding-interval",
            "50",
            *(["--stream-dirs"] if self.stream_dirs else []),
            *extra,
            env=self.env,
            host=self.netns(self.core_host),  # beside the core, as the README has it
        )

    def start_worker(
        self,
        name: str,
        *,
        wait: bool = True,
        host: Host | None = None,
        batch_size: int = 8,
        env: dict[str, str] | None = None,
    ) -> Service:
        """An encoder worker; it offers the core a capacity of two batches of ``batch_size``."""
        ready = self.folder / f"{name}.ready"
        ready.unlink(missing_ok=True)
        worker = self.service(
            "encode",
            "--core",
            self.core,
            "--threads",
            "1",
            "--batch-size",
            str(batch_size),
            "--worker-id",
            name,
            "--ready-file",
            str(ready),
            env={**self.env, **self.tiny_model, **(env or {})},
            host=self.netns(host),
        )
        if wait:
            wait_for(lambda: ready.exists() or worker.proc.poll() is not None, 60, f"worker {name} to load the model")
            assert worker.proc.poll() is None, worker.output()[-3000:]
        return worker

    def start_camera(
        self,
        index: int,
        *,
        fps: float = 40,
        host: Host | None = None,
        size: tuple[int, int] = (320, 240),
        source: str = "synthetic",
    ) -> str:
        """A Pi stand-in; its URL as a process on the same host reaches it."""
        port = free_port()
        self.service(
            "pisim",
            "--port",
            str(port),
            "--fps",
            str(fps),
            "--width",
            str(size[0]),
            "--height",
            str(size[1]),
            "--seed",
            str(index),
            "--scene-every",
            "1",
            "--source",
            source,
            host=self.netns(host),
        )
        return f"http://127.0.0.1:{port}/stream.mjpg"

    def start_ingest(self, index: int, url: str, *extra: str, host: Host | None = None) -> Service:
        return self.service(
            "ingest",
            "--core",
            self.core,
            "--stream",
            url,
            "--stream-id",
            f"cam{index}",
            *extra,
            env=self.env,
            host=self.netns(host),
        )

    def stop(self, timeout: float = 120) -> subprocess.CompletedProcess:
        """`encoders stop --pipeline CORE`, as an operator would: the pipeline drains and every service exits.
        Its totals in the form for programs (--format json): ``totals(done)`` reads them."""
        return subprocess.run(
            [sys.executable, "-m", "encoders", "stop", "--pipeline", self.core, "--timeout", str(timeout), *JSON],
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            env={**os.environ, **self.env},
        )

    def rows(self) -> list[tuple]:
        """(stream, seq, similarity, drift, snapshot_path, embedding text, worker) of the run, in order."""
        assert self.run_dir is not None
        with psycopg.connect(self.database) as conn:
            return conn.execute(
                "SELECT f.stream, f.seq, f.similarity, f.drift, f.snapshot_path, f.embedding::text, f.worker "
                "FROM frames f JOIN runs r ON r.id = f.run_id WHERE r.name = %s ORDER BY f.stream, f.seq",
                (self.run_dir.name,),
            ).fetchall()


def totals(done: subprocess.CompletedProcess) -> dict[str, FrameCounts]:
    """Each stream's totals, as `encoders stop --format json` (``Pipeline.stop``) printed them."""
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["streams"]


def subscribe(sockets: Sockets, endpoint: str, curve: CurveKeys | None = None) -> zmq.Socket:
    """A viewer's subscription to the core's records, stream starts and ends (``curve``: with keys on)."""
    return sockets.connect(zmq.SUB, endpoint, subscribe=[b"metrics/", b"eos/", b"start/"], curve=curve)


def collect(sub: zmq.Socket, *, until_eos: int = 0, records: int = 0, timeout_s: float = 90) -> list[Message]:
    """Messages from the subscription until ``until_eos`` ends of stream or ``records`` records have come."""
    got: list[Message] = []
    while (
        sum(isinstance(m, EndOfStream) for m in got) < until_eos
        or sum(isinstance(m, MetricsRecord) for m in got) < records
    ):
        assert sub.poll(int(timeout_s * 1000)), f"nothing from the core in {timeout_s} s"
        batch, _ = zmqio.receive(sub, topic=True)
        for msg in rows_of(batch) if batch is not None else ():  # a Records: its records, in order
            if isinstance(msg, MetricsRecord | EndOfStream | StreamStart):
                got.append(msg)
    return got
