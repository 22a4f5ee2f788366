"""The database benchmarks' common ground: their settings, synthetic video embeddings, the rows
the recorder would write for them, and the embedded PostgreSQL they run on.

The embeddings are clustered like real video: cameras that see a dozen views again and again,
scenes of 1 to 30 s of near-identical frames (consecutive cosine ~0.99) that wander slowly,
30 frames/s. The server is the embedded one (pgserver: PostgreSQL 16, pgvector 0.6) with its
default settings, in a temporary folder.

Settings (environment): BENCH_DB_FRAMES (200000), BENCH_DB_QUERIES (200 per kind).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from encoders.services.pisim.scene import SyntheticScene
from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.keyframes import Segmenter
from encoders.shared.storage.embedded import database
from encoders.shared.storage.frames import FrameRow

FRAMES = int(os.environ.get("BENCH_DB_FRAMES", "200000"))
QUERIES = int(os.environ.get("BENCH_DB_QUERIES", "200"))
DIM = 512
RUNS, STREAMS, FPS = 10, 2, 30.0
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
K = 10


# --------------------------------------------------------------------------------------
# Synthetic video embeddings


@dataclass
class Video:
    vectors: np.ndarray  # (N, DIM) float32, unit rows, in capture order per stream
    run: np.ndarray  # (N,) run number 1..RUNS
    stream: np.ndarray  # (N,) stream number
    seq: np.ndarray  # (N,)
    t: np.ndarray  # (N,) capture time, epoch seconds


def synthetic_video(frames: int, seed: int = 0) -> Video:
    """RUNS runs (one a day) x STREAMS cameras; each camera has 12 views it returns to. A scene
    is one view, shifted (cosine ~0.8 to another visit of the same view), lasting 1 to 30 s,
    its frames wandering slowly (a random walk) around it, each with its own noise."""
    rng = np.random.default_rng(seed)
    per_stream = frames // (RUNS * STREAMS)
    places = rng.standard_normal((STREAMS, 12, DIM))
    vecs, runs, streams, seqs, times = [], [], [], [], []
    for r in range(RUNS):
        for s in range(STREAMS):
            seq = 0
            while seq < per_stream:
                n = min(int(rng.integers(30, 900)), per_stream - seq)
                centre = places[s, rng.integers(12)] + 0.5 * rng.standard_normal(DIM)
                walk = np.cumsum(0.01 * rng.standard_normal((n, DIM)), axis=0)
                vecs.append(centre + walk + 0.1 * rng.standard_normal((n, DIM)))
                runs.append(np.full(n, r + 1))
                streams.append(np.full(n, s))
                seqs.append(np.arange(seq, seq + n))
                times.append(T0 + r * 86400 + np.arange(seq, seq + n) / FPS)
                seq += n
    v = np.concatenate(vecs).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return Video(v, np.concatenate(runs), np.concatenate(streams), np.concatenate(seqs), np.concatenate(times))


def frame_rows(
    video: Video,
    run_ids: dict[int, int],
    *,
    every_frame_a_keyframe: bool = False,
    thumbnail: bytes | None = None,
    thumbnails: str = "all",
) -> tuple[list[FrameRow], float]:
    """The rows the recorder would write, keyframes assigned by its Segmenter; and the
    segmenter's cost per frame in seconds."""
    cfg = RecorderConfig()
    segmenters: dict[tuple[int, int], Segmenter] = {}
    rows = []
    start = time.perf_counter()
    for i in range(len(video.seq)):
        key = (int(video.run[i]), int(video.stream[i]))
        seg = segmenters.get(key) or segmenters.setdefault(key, Segmenter(cfg.keyframe_drift, cfg.keyframe_max_s))
        seq = int(video.seq[i])
        keyframe, key_seq = (
            (True, seq) if every_frame_a_keyframe else seg.assign(seq, float(video.t[i]), video.vectors[i])
        )
        rows.append((key, seq, keyframe, key_seq))
    per_frame = (time.perf_counter() - start) / max(1, len(rows))
    out = []
    for i, ((run, stream), seq, keyframe, key_seq) in enumerate(rows):
        prev = i - 1 if seq > 0 else None
        sim = None if prev is None else float(video.vectors[i] @ video.vectors[prev])
        thumb = thumbnail if thumbnails == "all" or keyframe else None
        out.append(
            FrameRow(
                run_ids[run],
                f"cam{stream}",
                seq,
                float(video.t[i]),
                sim,
                None if sim is None else 1 - sim,
                video.vectors[i],
                None,
                "bench",
                keyframe,
                key_seq,
                thumb,
            )
        )
    return out, per_frame


def capture_order(rows: list[FrameRow]) -> list[FrameRow]:
    """As a live recorder receives them: the streams of a run interleaved."""
    return sorted(rows, key=lambda r: (r.run_id, r.t_capture, r.stream))


def pisim_jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    SyntheticScene(w, h, seed=1).render(1.3).save(buf, "JPEG", quality=80)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# The server


@contextmanager
def embedded_server() -> Iterator[tuple[str, Path]]:
    """(URL, folder) of an embedded server in a temporary folder, removed at the end."""
    home = Path(tempfile.mkdtemp(prefix="encoders-pg-bench-"))
    try:
        with database("", str(home)) as url:
            yield url, home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def new_database(url: str, name: str) -> str:
    """A fresh database for one measurement, on a quiet server and disk: what the measurement
    before it wrote (5 GB at 2,000,000 rows) is checkpointed and synced first, so that its
    write-back is not counted against this one."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
        conn.execute("CHECKPOINT")
    os.sync()
    return url.replace("/postgres?", f"/{name}?")


def scalar(conn: psycopg.Connection, query: str, params: Any = None) -> Any:
    """The first column of the one row ``query`` returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def server_versions(url: str) -> dict:
    with psycopg.connect(url) as conn:
        pg = scalar(conn, "SHOW server_version")
        vec = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        settings = {k: scalar(conn, f"SHOW {k}") for k in ("shared_buffers", "synchronous_commit")}
    return {"postgresql": pg, "pgvector": vec[0] if vec else None, **settings}
