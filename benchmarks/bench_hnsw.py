"""The keyframe index's graph: what ef_construction (at insert) and ef_search (at query) do to
recall, above all for queries far from every frame, as CLIP text queries are.

Not part of `make bench` (it takes minutes): `python -m benchmarks hnsw`. The keyframes of
BENCH_HNSW_FRAMES (default 2,000,000) frames of the database benchmarks' synthetic video
(db_data.py), cut by the recorder's own Segmenter, are inserted in capture order into an
empty table that has the index, a few hundred at a time, as the recorder inserts them (a
graph built by CREATE INDEX over rows already there is a different, usually better, graph).
Then 200 text-like and 200 frame-like queries at several ef_search, against exact numpy
search over the same keyframes. Recall here is of keyframes, the first stage of a search
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.keyframes import Segmenter

from .db_data import DIM, K, Video, embedded_server, new_database, synthetic_video
from .db_search import queries

FRAMES = int(os.environ.get("BENCH_HNSW_FRAMES", "2000000"))
QUERIES = 200
EF_CONSTRUCTION = (64, 128)
EF_SEARCH = (200, 400, 800)
INSERT_ROWS = 200  # keyframes per INSERT: about what one recorder batch of 500 rows holds at a busy time


def keyframes(frames: int) -> tuple[np.ndarray, Video]:
    """The keyframes' vectors in capture order (runs one after another, cameras interleaved), and the video."""
    video = synthetic_video(frames)
    cfg = RecorderConfig()
    segmenters: dict[tuple[int, int], Segmenter] = {}
    chosen = []
    order = np.lexsort((video.stream, video.t, video.run))
    for i in order:
        key = (int(video.run[i]), int(video.stream[i]))
        seg = segmenters.get(key) or segmenters.setdefault(key, Segmenter(cfg.keyframe_drift, cfg.keyframe_max_s))
        if seg.assign(int(video.seq[i]), float(video.t[i]), video.vectors[i])[0]:
            chosen.append(i)
    return video.vectors[chosen], video


def build(url: str, vectors: np.ndarray, ef_construction: int) -> float:
    """A table of the keyframes with the index, filled as the recorder fills it; seconds per keyframe."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        conn.execute(f"CREATE TABLE staged (id bigint PRIMARY KEY, embedding vector({DIM}))")
        with conn.cursor() as cur, cur.copy("COPY staged (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "vector"])
            for i, v in enumerate(vectors):
                copy.write_row((i, v))
        conn.execute(f"CREATE TABLE keyframes (id bigint PRIMARY KEY, embedding vector({DIM}))")
        conn.execute(
            f"CREATE INDEX ON keyframes USING hnsw (embedding vector_cosine_ops) "
            f"WITH (m = 16, ef_construction = {ef_construction})"
        )
        start = time.perf_counter()
        for first in range(0, len(vectors), INSERT_ROWS):
            conn.execute(
                "INSERT INTO keyframes SELECT id, embedding FROM staged WHERE id >= %s AND id < %s ORDER BY id",
                (first, first + INSERT_ROWS),
            )
        return (time.perf_counter() - start) / len(vectors)


def recall(url: str, vectors: np.ndarray, qs: np.ndarray, ef_search: int) -> dict:
    truth = np.argsort(-(qs @ vectors.T), axis=1)[:, :K]
    found, none, latencies = [], 0, []
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(f"SET hnsw.ef_search = {ef_search}")
        for q, want in zip(qs, truth, strict=False):
            start = time.perf_counter()
            got = [r[0] for r in conn.execute("SELECT id FROM keyframes ORDER BY embedding <=> %s LIMIT %s", (q, K))]
            latencies.append(time.perf_counter() - start)
            hit = len(set(got) & set(want.tolist())) / K
            found.append(hit)
            none += hit == 0
    return {
        "recall_at_10": float(np.mean(found)),
        "queries_finding_none": int(none),
        "p50_ms": float(np.median(latencies) * 1000),
    }


def main() -> dict:
    started = time.perf_counter()
    vectors, video = keyframes(FRAMES)
    print(
        f"{FRAMES} frames -> {len(vectors)} keyframes (the recorder's Segmenter), "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    rng = np.random.default_rng(11)
    kinds = {"text-like": queries(video, QUERIES, rng, far=True)[0], "frame-like": queries(video, QUERIES, rng)[0]}
    result: dict = {"frames": FRAMES, "keyframes": len(vectors), "queries": QUERIES, "graphs": {}}
    with embedded_server() as (url, _home):
        for efc in EF_CONSTRUCTION:
            db = new_database(url, f"hnsw_{efc}")
            per_keyframe = build(db, vectors, efc)
            graph: dict = {"insert_ms_per_keyframe": per_keyframe * 1000, "ef_search": {}}
            print(f"ef_construction {efc}: {per_keyframe * 1000:.2f} ms per keyframe inserted", flush=True)
            for kind, qs in kinds.items():
                for ef in EF_SEARCH:
                    r = recall(db, vectors, qs, ef)
                    graph["ef_search"][f"{kind} {ef}"] = r
                    print(
                        f"  {kind:10s} ef_search {ef:4d}: keyframe recall@10 {r['recall_at_10']:.3f}, "
                        f"{r['queries_finding_none']} of {QUERIES} finding none, p50 {r['p50_ms']:.2f} ms",
                        flush=True,
                    )
            result["graphs"][efc] = graph
    result["seconds"] = time.perf_counter() - started
    return result
