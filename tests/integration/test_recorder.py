"""The recorder as a real process, fed over real sockets, writing into a real PostgreSQL + pgvector.

The test plays metrics (a PUSH of records) and ingest (a publisher of frames: an XPUB, so the
test knows when the recorder's subscription has arrived and no frame is sent into the void).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pgserver
import psycopg
import pytest
import zmq
from pgvector.psycopg import register_vector
from PIL import Image

from encoders.logging_utils import load_run_embeddings
from encoders.services.recorder.rows import to_spool
from encoders.services.recorder.spool import Spool
from encoders.services.recorder.writer import FrameWriter, Inline, writer_thread
from encoders.shared import zmqio
from encoders.shared.messages import EndOfStream, Frame, FrameCounts, MetricsRecord
from encoders.shared.storage.connection import Database
from encoders.shared.storage.embedded import database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable
from encoders.shared.storage.frames import FrameRow

from ..conftest import Sockets, endpoint, wait_for

DIM = 512
T0 = 1_767_000_000.0


# --------------------------------------------------------------------------------------
# PostgreSQL


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


@pytest.fixture(scope="module")
def pg():
    home = pg_home()
    server = Postgres(home)
    yield server
    server.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def db_url(pg):
    return pg.new_database()


# --------------------------------------------------------------------------------------
# The recorder process and the sockets that feed it


class Feed:
    """Binds what metrics and ingest would bind; sends records, frames and ends of stream."""

    def __init__(self, sockets: Sockets):
        self.records = sockets.bind(zmq.PUSH)
        self.frames = sockets.bind(zmq.XPUB)
        for sock in (self.records, self.frames):
            sock.setsockopt(zmq.SNDTIMEO, 5000)
        self.records_ep = endpoint(self.records)
        self.frames_ep = endpoint(self.frames)
        self.vectors: dict[tuple[str, int], np.ndarray] = {}

    def wait_subscribed(self, timeout: float = 15.0) -> None:
        if not self.frames.poll(int(timeout * 1000)):
            raise AssertionError("the recorder never subscribed to frames")
        assert self.frames.recv() == b"\x01frame/"

    def frame(self, stream: str, seq: int) -> None:
        zmqio.send(self.frames, Frame(stream, seq, T0 + seq * 0.25, 4, 4, jpeg_bytes(stream, seq)), topic=True)

    def record(self, stream: str, seq: int, *, first_seq: int = 0) -> MetricsRecord:
        v = np.random.default_rng([seq, len(stream)]).standard_normal(DIM).astype(np.float32)
        v /= np.linalg.norm(v)
        prev = self.vectors.get((stream, seq - 1))
        sim = None if prev is None or seq == first_seq else float(np.dot(v, prev))
        self.vectors[(stream, seq)] = v
        rec = MetricsRecord(
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
            counts={"embedded": seq + 1, "dropped": 0, "skipped": 0, "lost": 0},
            vector=v,
        )
        zmqio.send(self.records, rec)
        return rec

    def end(self, stream: str, last_seq: int, counts: FrameCounts) -> None:
        zmqio.send(self.records, EndOfStream(stream, last_seq, counts))


def jpeg_bytes(stream: str, seq: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + f"{stream}:{seq}".encode() + bytes(range(256)) + b"\xff\xd9"


class RecorderProcess:
    def __init__(self, tmp: Path, feed: Feed | None, url: str, *args: str):
        self.runs = tmp / "runs"
        self.log_path = tmp / "recorder.log"
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
            *args,
        ]
        if feed is not None:
            cmd += ["--records", feed.records_ep, "--frames", feed.frames_ep]
        env = {**os.environ, "ENCODERS_LOG_LEVEL": "INFO"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"), env=env)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"recorder did not exit in {timeout} s; log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def run_dir(self) -> Path:
        (run,) = [p for p in self.runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return run

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def feed(sockets):
    return Feed(sockets)


@pytest.fixture
def start(tmp_path):
    started: list[RecorderProcess] = []

    def start_recorder(feed, url, *args):
        p = RecorderProcess(tmp_path, feed, url, *args)
        started.append(p)
        return p

    yield start_recorder
    for p in started:
        p.kill()


def frames_rows(conn, run_id: int):
    return conn.execute(
        "SELECT stream, seq, captured_at, similarity, drift, embedding, snapshot_path, worker "
        "FROM frames WHERE run_id = %s ORDER BY stream, seq",
        (run_id,),
    ).fetchall()


def count_frames(conn) -> int:
    try:
        return conn.execute("SELECT count(*) FROM frames").fetchone()[0]
    except psycopg.errors.UndefinedTable:  # not yet: created when the first record arrives
        return 0


def send_stream(feed: Feed, stream: str, seqs, *, frames: bool = True) -> list[MetricsRecord]:
    if frames:
        for seq in seqs:
            feed.frame(stream, seq)
        time.sleep(0.2)  # paces: frames come a little before their records, as from a real pipeline
    return [feed.record(stream, seq) for seq in seqs]


# --------------------------------------------------------------------------------------
# Tests


def test_one_stream_rows_files_index_and_summary(pg, db_url, feed, start):
    rec = start(feed, db_url, "--exit-after-streams", "1")
    feed.wait_subscribed()
    sent = send_stream(feed, "cam0", range(10))
    zmqio.send(feed.records, sent[5])  # a record sent twice is recorded once
    feed.records.send_multipart([b"not a message"])  # counted and dropped
    final = {"published": 13, "embedded": 10, "dropped": 2, "skipped": 1, "lost": 0, "late": 0}
    feed.end("cam0", 12, final)
    assert rec.wait() == 0, rec.log()
    run = rec.run_dir()
    config = json.loads((run / "config.json").read_text())
    run_id = config["run"]["id"]
    assert config["model"] == {"name": "ViT-B-32", "dim": DIM}
    assert config["recorder"]["database_url"].startswith("postgresql://postgres:")

    with pg.connect(db_url) as conn:
        rows = frames_rows(conn, run_id)
        assert [(r[0], r[1]) for r in rows] == [("cam0", i) for i in range(10)]
        for r, m in zip(rows, sent, strict=False):
            np.testing.assert_array_equal(r[5].to_numpy(), m.vector)
            assert r[2].timestamp() == pytest.approx(m.t_capture, abs=1e-6)
            assert r[3] == (None if m.similarity is None else pytest.approx(m.similarity, abs=1e-6))
            assert r[7] == "worker-1"
        assert [r[1] for r in rows if r[6]] == [0, 4, 8]
        assert rows[4][6] == "snapshots/frame_000004.jpg"

        (indexdef,) = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'frames' AND indexdef ILIKE '%USING hnsw%'"
        ).fetchone()
        assert "vector_cosine_ops" in indexdef and "WHERE keyframe" in indexdef
        assert "ef_construction='128'" in indexdef and "m='16'" in indexdef, indexdef
        # Random vectors: no two frames alike, so every frame leads a segment of its own.
        assert conn.execute("SELECT bool_and(keyframe AND keyframe_seq = seq) FROM frames").fetchone() == (True,)
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT seq FROM frames WHERE keyframe ORDER BY embedding <=> %s LIMIT 5", (sent[3].vector,)
            ).fetchall()
        )
        assert "frames_keyframe_hnsw" in plan, plan
        nearest = conn.execute(
            "SELECT seq FROM frames WHERE run_id = %s ORDER BY embedding <=> %s LIMIT 1", (run_id, sent[3].vector)
        ).fetchone()
        assert nearest == (3,)

        name, model, dim, ended_at, summary = conn.execute(
            "SELECT name, model, dim, ended_at, summary FROM runs WHERE id = %s", (run_id,)
        ).fetchone()
        assert (name, model, dim) == (run.name, "ViT-B-32", DIM)
        assert ended_at is not None and summary["streams"]["cam0"]["frames"] == final

    with (run / "drift.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["timestamp", "frame", "similarity", "drift"]
    assert len(table) == 11
    for row, m in zip(table[1:], sent, strict=False):
        assert float(row[0]) == pytest.approx(m.t_capture, abs=1e-6)
        assert int(row[1]) == m.seq
        if m.similarity is None:
            assert row[2:] == ["", ""]
        else:
            assert float(row[2]) == pytest.approx(m.similarity) and float(row[3]) == pytest.approx(m.drift)

    emb, ts, idx = load_run_embeddings(run)
    assert emb.shape == (10, DIM) and list(idx) == list(range(10))
    np.testing.assert_array_equal(emb, np.stack([m.vector for m in sent]))
    np.testing.assert_array_equal(ts, [m.t_capture for m in sent])
    assert sorted(p.name for p in (run / "embeddings").iterdir()) == [
        "batch_0000.npz",
        "batch_0001.npz",
        "batch_0002.npz",
    ]

    # Snapshot interval 1 s, frames 0.25 s apart: seq 0, 4, 8; their JPEGs byte for byte.
    snaps = sorted((run / "snapshots").iterdir())
    assert [p.name for p in snaps] == ["frame_000000.jpg", "frame_000004.jpg", "frame_000008.jpg"]
    assert snaps[1].read_bytes() == jpeg_bytes("cam0", 4)

    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["streams"]) == ["cam0"] and summary["totals"]["frames"] == final
    run_summary, summary = summary["run"], summary["streams"]["cam0"]
    assert summary["frames"] == final and summary["counts_from"] == "end_of_stream"
    assert summary["records"] == 10 and summary["db_rows"] == 10 and run_summary["db_rows"] == 10
    assert summary["snapshots"] == 3 and summary["npz_batches"] == 3
    drifts = [m.drift for m in sent[1:] if m.drift is not None]
    similarities = [m.similarity for m in sent[1:] if m.similarity is not None]
    assert len(drifts) == len(similarities) == 9  # every record after the first has both
    assert summary["drift"]["mean"] == pytest.approx(np.mean(drifts))
    assert summary["drift"]["std"] == pytest.approx(np.std(drifts))
    assert summary["similarity"]["min"] == pytest.approx(min(similarities))
    assert summary["duration_s"] == pytest.approx(2.25)
    assert summary["effective_fps"] == pytest.approx(4.0)
    assert run_summary["messages"]["repeated_records"] == 1
    assert run_summary["messages"]["bad_messages"] == 1
    log = rec.log()
    assert "rows written to the database" in log and str(run) in log


def test_two_streams_keep_their_own_rows_and_files(pg, db_url, feed, start):
    rec = start(feed, db_url, "--exit-after-streams", "2")
    feed.wait_subscribed()
    for seq in range(6):
        feed.frame("cam0", seq)
        feed.frame("cam1", seq)
    time.sleep(0.2)  # paces: frames come a little before their records, as from a real pipeline
    for seq in range(6):
        feed.record("cam0", seq)
        if seq < 3:
            feed.record("cam1", seq)
    feed.end("cam0", 5, {"published": 6, "embedded": 6})
    feed.end("cam1", 2, {"published": 3, "embedded": 3})
    assert rec.wait() == 0, rec.log()
    run = rec.run_dir()
    run_id = json.loads((run / "config.json").read_text())["run"]["id"]
    with pg.connect(db_url) as conn:
        rows = frames_rows(conn, run_id)
    assert [(r[0], r[1]) for r in rows] == [("cam0", i) for i in range(6)] + [("cam1", i) for i in range(3)]
    cam1_snaps = [r[6] for r in rows if r[0] == "cam1" and r[6]]
    assert cam1_snaps == ["cam1/snapshots/frame_000000.jpg"]
    assert (run / cam1_snaps[0]).read_bytes() == jpeg_bytes("cam1", 0)
    # The first stream in the run folder itself (the seed's layout); the second beside it.
    assert list(load_run_embeddings(run, stream="cam0")[2]) == list(range(6))
    assert list(load_run_embeddings(run / "cam1")[2]) == [0, 1, 2]
    assert len((run / "drift.csv").read_text().splitlines()) == 7
    assert len((run / "cam1" / "drift.csv").read_text().splitlines()) == 4
    assert json.loads((run / "cam1" / "summary.json").read_text())["streams"]["cam1"]["frames"]["published"] == 3
    top = json.loads((run / "summary.json").read_text())
    assert {name: s["folder"] for name, s in top["streams"].items()} == {"cam0": ".", "cam1": "cam1"}


def test_a_run_folder_whose_name_the_database_has_is_refused(pg, db_url, feed, start, tmp_path):
    # A run's folder and its row have the same name: one taken in the database (another runs
    # folder) is said at start, never renamed behind the caller's back.
    db = Database.open(db_url, wait_s=5)
    db.claim_run("20260107_143022", datetime.now(UTC))
    db.close()
    rec = start(feed, db_url, "--run-dir", str(tmp_path / "runs" / "20260107_143022"))
    assert rec.wait() == 2, rec.log()
    assert "cannot start: the database already has a run named '20260107_143022'" in rec.log()
    assert "Traceback" not in rec.log()
    assert not (tmp_path / "runs" / "20260107_143022").exists()


@pytest.mark.parametrize(
    "flag,endpoint", [("--records", "tcp://nonsense"), ("--frames", "tcp://127.0.0.1:1,tcp://:::")]
)
def test_an_address_that_does_not_parse_exits_2_before_a_run_is_claimed(pg, db_url, start, flag, endpoint):
    rec = start(None, db_url, flag, endpoint)
    assert rec.wait() == 2, rec.log()
    errors = [line for line in rec.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot start: cannot connect" in errors[0], rec.log()
    assert "Traceback" not in rec.log()
    assert not rec.runs.exists() or not [p for p in rec.runs.iterdir() if not p.name.startswith(".")]
    with psycopg.connect(db_url) as conn:  # not even migrated: the database was not touched
        assert conn.execute("SELECT to_regclass('runs') IS NULL").fetchone() == (True,)


def test_stream_dirs_give_each_stream_a_folder(pg, db_url, feed, start, tmp_path):
    rec = start(
        feed,
        db_url,
        "--exit-after-streams",
        "2",
        "--stream-dirs",
        "--run-dir",
        str(tmp_path / "runs" / "20260107_143022"),
    )
    feed.wait_subscribed()
    for cam in ("cam0", "cam1"):
        send_stream(feed, cam, range(3), frames=False)
        feed.end(cam, 2, {"embedded": 3})
    assert rec.wait() == 0, rec.log()
    run = rec.run_dir()
    assert run.name == "20260107_143022"
    assert json.loads((run / "config.json").read_text())["run"]["name"] == "20260107_143022"
    assert sorted(p.name for p in run.iterdir()) == ["cam0", "cam1", "config.json", "summary.json"]
    top = json.loads((run / "summary.json").read_text())
    assert set(top["streams"]) == {"cam0", "cam1"} and top["totals"]["db_rows"] == 6
    assert list(load_run_embeddings(run, stream="cam1")[2]) == [0, 1, 2]


def test_no_database_url_starts_an_embedded_server_in_the_runs_folder(feed, start):
    home = pg_home()
    try:
        rec = start(feed, "", "--runs-dir", str(home), "--exit-after-streams", "1")
        feed.wait_subscribed()
        send_stream(feed, "cam0", range(3), frames=False)
        feed.end("cam0", 2, {"embedded": 3})
        assert rec.wait() == 0, rec.log()
        assert "embedded PostgreSQL in %s" % (home / ".pgdata") in rec.log()
        (run,) = [p for p in home.iterdir() if not p.name.startswith(".")]
        assert json.loads((run / "summary.json").read_text())["totals"]["db_rows"] == 3
        # The last process using it has gone: the server was stopped, and its data kept.
        assert (home / ".pgdata" / "PG_VERSION").exists() and not (home / ".pgdata" / "postmaster.pid").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_unreachable_database_exits_with_a_clear_error_and_no_password(tmp_path, start):
    rec = start(None, "postgresql://user:s3cret@127.0.0.1:1/x", "--db-connect-timeout", "1")
    code = rec.wait()
    log = rec.log()
    assert code != 0
    assert "127.0.0.1" in log and "port=1" in log and "database=x" in log
    assert "s3cret" not in log
    assert not rec.runs.exists() or not any(rec.runs.iterdir())


def test_unreachable_database_error_in_this_process_has_no_password():
    with pytest.raises(DatabaseUnavailable) as info:
        Database.open("postgresql://alice:s3cret@127.0.0.1:1/frames", wait_s=0.2)
    message = str(info.value)
    assert "host=127.0.0.1 port=1 database=frames" in message
    assert "s3cret" not in message
    assert "s3cret" not in repr(info.value.__cause__) and "s3cret" not in repr(info.value.__context__)


def real_jpeg(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), colour).save(out, "JPEG", quality=85)
    return out.getvalue()


def test_thumbnails_scene_changes_and_keyframe_segments(pg, db_url, feed, start):
    rec = start(feed, db_url, "--exit-after-streams", "1", "--snapshot-interval", "100", "--thumbnail-size", "64")
    feed.wait_subscribed()
    rng = np.random.default_rng(5)
    views = [rng.standard_normal(DIM) for _ in range(2)]
    colours = [(200, 40, 40), (40, 40, 200)]
    for seq in range(12):  # frames 0-5 show one view, 6-11 another: metrics flags 6 as a scene change
        view = 0 if seq < 6 else 1
        if seq != 9:  # frame 9's JPEG never comes: no thumbnail for it, counted
            zmqio.send(feed.frames, Frame("cam0", seq, T0 + seq * 0.25, 320, 240, real_jpeg(colours[view])), topic=True)
    time.sleep(0.2)  # paces: frames come a little before their records, as from a real pipeline
    for seq in range(12):
        view = 0 if seq < 6 else 1
        v = views[view] + 0.02 * rng.standard_normal(DIM)
        v = (v / np.linalg.norm(v)).astype(np.float32)
        zmqio.send(
            feed.records,
            MetricsRecord(
                stream="cam0",
                seq=seq,
                t_capture=T0 + seq * 0.25,
                t_encoded=T0,
                worker="w",
                model="ViT-B-32",
                similarity=0.99,
                drift=0.6 if seq == 6 else 0.01,
                rolling={"count": 5, "mean": 0.01, "std": 0.002},
                vector=v,
                scene_change=seq == 6,
            ),
        )
    feed.end("cam0", 11, {"embedded": 12})
    assert rec.wait() == 0, rec.log()
    run = rec.run_dir()
    run_id = json.loads((run / "config.json").read_text())["run"]["id"]
    with pg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT seq, keyframe, keyframe_seq, thumbnail, snapshot_path FROM frames WHERE run_id = %s ORDER BY seq",
            (run_id,),
        ).fetchall()
        events = conn.execute(
            "SELECT stream, seq, drift, window_mean, window_std, snapshot_path FROM scene_changes WHERE run_id = %s",
            (run_id,),
        ).fetchall()
    # Two segments of near-identical frames; the scene change starts the second.
    assert [(seq, key, kseq) for seq, key, kseq, _, _ in rows] == [
        (s, s in (0, 6), 0 if s < 6 else 6) for s in range(12)
    ]
    for seq, _, _, thumb, _ in rows:
        if seq == 9:
            assert thumb is None
            continue
        img = Image.open(io.BytesIO(thumb))
        assert img.format == "JPEG" and img.size == (64, 48)
        pixel = img.getpixel((32, 24))
        assert isinstance(pixel, tuple)  # an RGB picture's pixel
        assert all(abs(a - b) < 16 for a, b in zip(pixel, colours[0 if seq < 6 else 1], strict=False))
    # Periodic snapshots (every 100 s: the first frame only) keep the seed's names; the scene
    # change, between two of them, gets its own beside them.
    assert [(seq, snap) for seq, _, _, _, snap in rows if snap] == [(0, "snapshots/frame_000000.jpg")]
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["frame_000000.jpg", "scene_000006.jpg"]
    assert (run / "snapshots" / "scene_000006.jpg").read_bytes() == real_jpeg(colours[1])
    assert len(events) == 1
    stream, seq, drift, mean, std, snap = events[0]
    assert (stream, seq, snap) == ("cam0", 6, "snapshots/scene_000006.jpg")
    assert (drift, mean, std) == (pytest.approx(0.6), pytest.approx(0.01), pytest.approx(0.002))
    messages = json.loads((run / "summary.json").read_text())["run"]["messages"]
    assert (messages["thumbnails"], messages["thumbnails_missing"], messages["scene_changes"]) == (11, 1, 1)


def test_database_outage_mid_run_loses_nothing(feed, start):
    home = pg_home()
    pg = Postgres(home, embedded=False)
    try:
        rec = start(feed, pg.url, "--exit-after-streams", "1", "--db-retry-max", "0.5", "--db-final-wait", "15")
        feed.wait_subscribed()
        send_stream(feed, "cam0", range(5), frames=False)
        with pg.connect() as conn:
            wait_for(lambda: count_frames(conn) == 5, timeout=10, what="the first rows")
        pg.stop()
        send_stream(feed, "cam0", range(5, 12), frames=False)
        spool = wait_for(lambda: next(rec.runs.glob("*/db_spool.msgpack"), None), timeout=10, what="the spool file")
        time.sleep(3.0)  # simulates: the database stays away for seconds (failed retries, with backoff)
        pg.start()
        send_stream(feed, "cam0", range(12, 15), frames=False)
        feed.end("cam0", 14, {"embedded": 15})
        assert rec.wait(30) == 0, rec.log()
        run_id = json.loads((rec.run_dir() / "config.json").read_text())["run"]["id"]
        with pg.connect() as conn:
            rows = frames_rows(conn, run_id)
            assert [r[1] for r in rows] == list(range(15))
            assert conn.execute("SELECT ended_at IS NOT NULL FROM runs WHERE id = %s", (run_id,)).fetchone() == (True,)
        assert not spool.exists()
        assert "database unavailable" in rec.log()
        summary = json.loads((rec.run_dir() / "summary.json").read_text())
        assert summary["run"]["db_outages"] >= 1 and summary["totals"]["db_rows"] == 15
    finally:
        pg.close()
        shutil.rmtree(home, ignore_errors=True)


def test_sigterm_mid_run_flushes_rows_and_writes_the_summary(pg, db_url, feed, start):
    # Rows would wait a minute before being written: only the shutdown writes them.
    rec = start(feed, db_url, "--db-flush-s", "60", "--db-batch", "1000")
    feed.wait_subscribed()
    send_stream(feed, "cam0", range(6))
    run = wait_for(lambda: next((p for p in rec.runs.iterdir() if p.is_dir()), None), timeout=10, what="the run folder")
    wait_for(
        lambda: (run / "drift.csv").exists() and len((run / "drift.csv").read_text().splitlines()) == 7,
        timeout=10,
        what="drift.csv rows",
    )
    with pg.connect(db_url) as conn:
        run_id = json.loads((run / "config.json").read_text())["run"]["id"]
        assert count_frames(conn) == 0
        rec.proc.send_signal(signal.SIGTERM)
        assert rec.wait() == 0, rec.log()
        assert [r[1] for r in frames_rows(conn, run_id)] == list(range(6))
        embedded = "SELECT summary->'totals'->'frames'->>'embedded' FROM runs WHERE id = %s"
        assert conn.execute(embedded, (run_id,)).fetchone() == ("6",)
    summary = json.loads((run / "summary.json").read_text())["streams"]["cam0"]
    assert summary["records"] == 6 and not summary["ended"] and summary["counts_from"] == "last_record"
    assert list(load_run_embeddings(run)[2]) == list(range(6))  # the partial batch too
    assert "received SIGTERM" in rec.log()


# --------------------------------------------------------------------------------------
# The database layer in this process


def make_row(run_id: int, seq: int, dim: int = DIM) -> FrameRow:
    v = np.random.default_rng(seq).standard_normal(dim).astype(np.float32)
    return FrameRow(
        run_id,
        "cam0",
        seq,
        T0 + seq,
        None if seq == 0 else 0.5,
        None if seq == 0 else 0.5,
        v / np.linalg.norm(v),
        None,
        "w",
    )


def test_rows_written_twice_are_stored_once(tmp_path, db_url):
    db = Database.open(db_url, wait_s=5)
    run_id = db.claim_run("replay", datetime.now(UTC))
    assert run_id is not None
    assert db.claim_run("replay", datetime.now(UTC)) is None  # names are unique
    writer = FrameWriter(db, Spool(tmp_path / "spool"), run_id=run_id, batch_rows=4, executor=writer_thread())
    writer.set_model("m", DIM)
    for seq in range(6):
        writer.add(make_row(run_id, seq))
    writer.flush()
    for seq in range(3, 9):  # 3..5 again, as a replayed spool would
        writer.add(make_row(run_id, seq))
    assert writer.close(1.0)
    assert writer.written == {"cam0": 9}
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT seq) FROM frames").fetchone() == (9, 9)
        assert conn.execute("SELECT model, dim FROM runs WHERE id = %s", (run_id,)).fetchone() == ("m", DIM)
    # Another model's embedding size cannot go into this database's frames table.
    with pytest.raises(DatabaseRefused, match=r"vector\(512\).*vector\(768\)"):
        Database.open(db_url, wait_s=5).ensure_frames(768)
    db.close()


def test_a_locked_frames_table_spools_the_rows_instead_of_hanging(tmp_path, db_url):
    """Someone holds a lock on frames (VACUUM FULL, REINDEX without CONCURRENTLY): the batch gives
    up after the lock timeout, its rows wait in the spool, and they are written once it is gone."""
    db = Database.open(db_url, wait_s=5)
    db.lock_timeout_s = 0.5
    run_id = db.claim_run("locked", datetime.now(UTC))
    assert run_id is not None
    writer = FrameWriter(db, Spool(tmp_path / "spool"), run_id=run_id, batch_rows=4, retry_max=0.5, executor=Inline())
    writer.set_model("m", DIM)
    for seq in range(4):
        writer.add(make_row(run_id, seq))
    assert writer.written == {"cam0": 4}
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE frames IN ACCESS EXCLUSIVE MODE")  # held until this transaction ends
        start = time.monotonic()
        for seq in range(4, 8):
            writer.add(make_row(run_id, seq))
        assert time.monotonic() - start < 5  # gave up waiting: the receive loop goes on
        assert writer.outages == 1 and writer.spooled == 4
        locker.rollback()
    assert writer.close(10.0)
    assert writer.written == {"cam0": 8} and writer.spooled == 0
    with psycopg.connect(db_url) as conn:
        assert [s for (s,) in conn.execute("SELECT seq FROM frames ORDER BY seq")] == list(range(8))
    db.close()


def test_rows_spooled_by_an_earlier_recorder_are_written_at_the_next_start(tmp_path, db_url, feed, start):
    db = Database.open(db_url, wait_s=5)
    run_id = db.claim_run("crashed", datetime.now(UTC))
    assert run_id is not None
    left = tmp_path / "runs" / "crashed"
    left.mkdir(parents=True)
    spool = Spool(left / "db_spool.msgpack")
    spool.append(to_spool(make_row(run_id, seq)) for seq in range(4))
    spool.close()  # as a recorder that exited while the database was away leaves it
    db.close()
    rec = start(feed, db_url, "--exit-after-streams", "1")
    feed.wait_subscribed()
    feed.end("cam0", -1, {})
    assert rec.wait() == 0, rec.log()
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM frames WHERE run_id = %s", (run_id,)).fetchone() == (4,)
    assert not (left / "db_spool.msgpack").exists()
