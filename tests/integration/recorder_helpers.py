"""What the recorder's integration tests share: a PostgreSQL they can stop and start, the recorder as a
real process, and records and frames as a core would send them (to tests/fake_core.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pgserver
import psycopg
from pgvector.psycopg import register_vector

from encoders.shared.messages import Frame, FrameCounts, MetricsRecord
from encoders.shared.storage.embedded import database

from ..fake_core import FakeCore

DIM = 512
T0 = 1_767_000_000.0
HEARTBEAT_S = "0.25"


class Postgres:
    """A pgserver PostgreSQL in a temporary folder, and what a test needs to stop and start it.

    ``embedded``: started the way the recorder starts its own (storage.embedded.database),
    stopped by pgserver at the end. Otherwise pgserver leaves stopping it to us: a server
    this test stops and starts again is no longer the one pgserver knows.
    """

    def __init__(self, base: Path, *, embedded: bool = True):
        self.pgdata = base / ".pgdata"
        self.embedded = embedded
        self._resources = ExitStack()
        if embedded:
            self.url = self._resources.enter_context(database("", str(base)))
        else:
            self.server = pgserver.get_server(self.pgdata, cleanup_mode=None)
            self.url = self.server.get_uri()

    def connect(self, url: str | None = None) -> psycopg.Connection:
        conn = psycopg.connect(url or self.url, autocommit=True)
        register_vector(conn)
        return conn

    def new_database(self) -> str:
        """A fresh database in this server, so that tests do not see each other's tables."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.replace("/postgres?", f"/{name}?")

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        # pgserver runs the server as the user "pgserver" when we are root.
        user = "pgserver" if os.geteuid() == 0 else None
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args],
            user=user,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        socket_dir = parse_qs(urlparse(self.url).query)["host"][0]
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.pgdata / "log"), "start")

    def running(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def close(self) -> None:
        if self.embedded:
            self._resources.close()
        elif self.running():
            self.stop()


def pg_home() -> Path:
    """A folder for a server's data outside pytest's tmp folders: pytest makes its own root
    private (0700) whenever a pytest run starts, and the server runs as the 'pgserver' user."""
    return Path(tempfile.mkdtemp(prefix="encoders-pg-"))


class RecorderProcess:
    """`encoders record` as a real process, connected to a stand-in core (or to ``core``, an address)."""

    def __init__(self, tmp: Path, core: FakeCore | str | None, url: str, *args: str, runs: Path | None = None):
        self.runs = runs or tmp / "runs"
        n = len(list(tmp.glob("recorder*.log")))
        self.log_path = tmp / f"recorder{n}.log"
        cmd = [
            sys.executable,
            "-m",
            "encoders",
            "record",
            "--database-url",
            url,
            "--runs-dir",
            str(self.runs),
            "--snapshot-interval",
            "1",
            "--embedding-interval",
            "4",
            "--db-flush-s",
            "0.05",
            "--heartbeat-s",
            HEARTBEAT_S,
        ]
        if core is not None:
            cmd += ["--core", core if isinstance(core, str) else core.endpoint]
        cmd += list(args)
        env = {**os.environ, "ENCODERS_LOG_LEVEL": "INFO"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"), env=env)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"recorder did not exit in {timeout} s; log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def run_dir(self) -> Path:
        (run,) = self.run_dirs()
        return run

    def run_dirs(self) -> list[Path]:
        return sorted(p for p in self.runs.iterdir() if p.is_dir() and not p.name.startswith("."))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def vector(stream: str, seq: int) -> np.ndarray:
    v = np.random.default_rng([seq, len(stream)]).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def make_record(stream: str, seq: int, *, first_seq: int = 0, counts: FrameCounts | None = None) -> MetricsRecord:
    """A record as the core sends it: similarity to the previous frame, the stream's running counts."""
    v = vector(stream, seq)
    sim = None if seq == first_seq else float(np.dot(v, vector(stream, seq - 1)))
    return MetricsRecord(
        stream=stream,
        seq=seq,
        t_capture=T0 + seq * 0.25,
        t_encoded=T0 + seq * 0.25 + 0.1,
        worker="worker-1",
        model="ViT-B-32",
        similarity=sim,
        drift=None if sim is None else 1.0 - sim,
        rolling={},
        fps=4.0,
        counts=counts if counts is not None else {"embedded": seq + 1, "dropped": 0, "skipped": 0, "lost": 0},
        vector=v,
    )


def jpeg_bytes(stream: str, seq: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + f"{stream}:{seq}".encode() + bytes(range(256)) + b"\xff\xd9"


def make_frame(stream: str, seq: int) -> Frame:
    return Frame(stream, seq, T0 + seq * 0.25, 4, 4, jpeg_bytes(stream, seq))


def send_stream(core: FakeCore, stream: str, seqs, *, frames: bool = True) -> list[MetricsRecord]:
    seqs = list(seqs)
    if frames:  # the pictures the stream's ingest holds: the recorder asks for those it wants
        for seq in seqs:
            core.frame(make_frame(stream, seq))
    out = []
    for seq in seqs:
        rec = make_record(stream, seq)
        core.deliver(rec)
        out.append(rec)
    return out


def frames_rows(conn, run_id: int):
    return conn.execute(
        "SELECT stream, seq, captured_at, similarity, drift, embedding, snapshot_path, worker "
        "FROM frames WHERE run_id = %s ORDER BY stream, seq",
        (run_id,),
    ).fetchall()


def stored_seqs(conn, run_id: int, stream: str = "cam0") -> list[int]:
    try:
        return [
            s
            for (s,) in conn.execute(
                "SELECT seq FROM frames WHERE run_id = %s AND stream = %s ORDER BY seq", (run_id, stream)
            )
        ]
    except psycopg.errors.UndefinedTable:  # not yet: created when the first record arrives
        return []


def count_frames(conn) -> int:
    try:
        return conn.execute("SELECT count(*) FROM frames").fetchone()[0]
    except psycopg.errors.UndefinedTable:  # not yet: created when the first record arrives
        return 0


def run_id_of(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["run"]["id"]


def csv_seqs(path: Path) -> list[int]:
    with path.open() as f:
        return [int(r[1]) for r in list(csv.reader(f))[1:]]
