"""The search benchmark: p50/p99 latency of ``Store.nearest`` (what `encoders search` runs,
without loading a model) and recall@10 against exact numpy search, unfiltered and filtered, on
the embeddings the writer benchmark stored."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from encoders.services.search.config import SearchConfig
from encoders.shared.storage.filters import Filters
from encoders.shared.storage.store import Store

from .db_data import DIM, FPS, RUNS, STREAMS, T0, K, Video


def queries(video: Video, n: int, rng: np.random.Generator, *, far: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Query vectors and the frame each was made from. Frame-like: a new frame of a recorded
    scene (another noise draw). Text-like: only loosely related to any frame (cosine ~0.35 to
    the nearest), as CLIP text embeddings are to images."""
    src = rng.choice(len(video.seq), n, replace=False)
    base = video.vectors[src]
    if far:
        q = 0.35 * base + rng.standard_normal(base.shape).astype(np.float32) / math.sqrt(DIM)
    else:
        q = base + 0.3 * rng.standard_normal(base.shape).astype(np.float32) / math.sqrt(DIM)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), src


def exact_top(video: Video, q: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, float]:
    """The K nearest frames that pass the filter (fewer if fewer pass), and the K-th similarity."""
    sims = video.vectors @ q
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
    k = min(K, int(np.isfinite(sims).sum()))
    top = np.argpartition(-sims, k)[:k] if k < len(sims) else np.arange(len(sims))
    top = top[np.argsort(-sims[top])][:k]
    return top, float(sims[top[-1]]) if k else math.inf


def search_kind(
    store: Store,
    video: Video,
    index_of: dict,
    run_ids: dict[int, int],
    qs: np.ndarray,
    src: np.ndarray,
    filter_for,
    *,
    ef_search: int,
    exact_limit: int,
    rng: np.random.Generator,
) -> dict:
    cfg = SearchConfig()
    latencies, recall, recall_ties, plans = [], [], [], set()
    for i in range(-10, len(qs)):  # 10 warm-up queries, not counted
        q = qs[i % len(qs)]
        filters, mask = filter_for(int(src[i % len(qs)]), rng)
        start = time.perf_counter()
        result = store.nearest(
            q, K, filters, candidates=cfg.search_candidates, ef_search=ef_search, exact_limit=exact_limit
        )
        took = time.perf_counter() - start
        if i < 0:
            continue
        latencies.append(took)
        plans.add("exact keyframes" if result.plan.exact_keyframes else f"HNSW ef_search {result.plan.ef_search}")
        want, kth = exact_top(video, q, mask)
        got = [index_of[(h.run_id, h.stream, h.seq)] for h in result.hits]
        recall.append(len(set(got) & set(want.tolist())) / len(want))
        # Tie-aware (ann-benchmarks' k-nn): a hit as near as the K-th true neighbour counts.
        recall_ties.append(sum(1 for g in got if float(video.vectors[g] @ q) >= kth - 1e-6) / len(want))
    ms = np.array(latencies) * 1000
    return {
        "queries": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "recall_at_10": float(np.mean(recall)),
        "min_recall": float(np.min(recall)),
        "recall_at_10_ties": float(np.mean(recall_ties)),
        "plans": sorted(plans),
    }


def search(db_url: str, video: Video, n: int) -> dict:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE frames")  # what autovacuum does after a load like this
        register_vector(conn)
        store = Store(conn)
        run_ids: dict[int, int] = dict(conn.execute("SELECT split_part(name, '_', 2)::int, id FROM runs").fetchall())
        index_of = {
            (run_ids[int(video.run[i])], f"cam{int(video.stream[i])}", int(video.seq[i])): i
            for i in range(len(video.seq))
        }
        rng = np.random.default_rng(1)
        exact_limit = SearchConfig().search_exact_keyframes

        def unfiltered(src, rng):
            return Filters(), None

        def one_run(src, rng):  # any run, not the query's own: its nearest frames may be far in the index
            r = int(rng.integers(1, RUNS + 1))
            return Filters(run_ids=(run_ids[r],)), video.run == r

        duration = len(video.seq) / (RUNS * STREAMS) / FPS

        def run_and_window(src, rng):  # two minutes of the query's own run
            r = int(video.run[src])
            since = T0 + (r - 1) * 86400 + float(rng.uniform(0, max(0.0, duration - 120)))
            f = Filters(
                run_ids=(run_ids[r],),
                since=datetime.fromtimestamp(since, UTC),
                until=datetime.fromtimestamp(since + 120, UTC),
            )
            return f, (video.run == r) & (video.t >= since) & (video.t < since + 120)

        def days(src, rng):  # three days, with --since/--until
            first = int(rng.integers(1, RUNS - 1))
            since, until = T0 + (first - 1) * 86400, T0 + (first + 2) * 86400
            f = Filters(since=datetime.fromtimestamp(since, UTC), until=datetime.fromtimestamp(until, UTC))
            return f, (video.t >= since) & (video.t < until)

        frame_q, frame_src = queries(video, n, rng)
        text_q, text_src = queries(video, n, rng, far=True)
        cfg = SearchConfig()
        # Text-like queries are searched as `encoders search --text` searches (its own ef_search).
        frame, text = (frame_q, frame_src, cfg.search_ef), (text_q, text_src, cfg.search_ef_text)
        kinds = [
            ("unfiltered, frame-like queries", *frame, unfiltered, exact_limit),
            ("unfiltered, text-like queries", *text, unfiltered, exact_limit),
            ("--run (another run than the query's)", *frame, one_run, exact_limit),
            ("--run + 2 minutes (--since/--until)", *frame, run_and_window, exact_limit),
            ("--since/--until over 3 of 10 days", *frame, days, exact_limit),
            ("text-like, --since/--until over 3 days", *text, days, exact_limit),
            ("--run through the HNSW index (forced)", *frame, one_run, 0),
        ]
        out = {}
        for label, qs, src, ef, filter_for, limit in kinds:
            out[label] = search_kind(
                store, video, index_of, run_ids, qs, src, filter_for, ef_search=ef, exact_limit=limit, rng=rng
            )
            r = out[label]
            print(
                f"  {label:42s} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  recall@10 "
                f"{r['recall_at_10']:.3f} (ties {r['recall_at_10_ties']:.3f}, min {r['min_recall']:.1f})  "
                f"{'; '.join(r['plans'])}",
                flush=True,
            )
        return out
