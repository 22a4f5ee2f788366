"""Database benchmarks: how fast the recorder stores embeddings, and how fast and how well search finds them.

1. insert: embeddings/s that the recorder's writer (FrameWriter: batches, binary COPY,
   commit) stores in a pgvector table with its HNSW index (on keyframes), 512 dims;
   and, for scale, the same with every frame a keyframe (each row an HNSW insert), with
   a thumbnail in every row or on keyframes only, and what making a thumbnail costs;
   and the whole recorder process (`encoders record`: records over its session with the core,
   run files, the database), fed by a stand-in for the core (tests/fake_core.py) as fast as it
   acknowledges them.
2. search: p50/p99 latency of ``Store.nearest`` (what `encoders search` runs, without
   loading a model) and recall@10 against exact numpy search, unfiltered and filtered,
   on the embeddings stored by step 1.

The embeddings are synthetic, clustered like real video: cameras that see a dozen views
again and again, scenes of 1 to 30 s of near-identical frames (consecutive cosine ~0.99)
that wander slowly, 30 frames/s. The server is the embedded one (pgserver: PostgreSQL 16,
pgvector 0.6) with its default settings, in a temporary folder.

Settings (environment): BENCH_DB_FRAMES (200000), BENCH_DB_QUERIES (200 per kind).

This module runs the measurements in order and prints their figures; each lives beside it:
db_data.py (the video, its rows, the server), db_writer.py (insert), db_process.py (the
recorder process, fed by tests/fake_core.py), db_thumbnails.py (what thumbnails cost) and
db_search.py (search).
"""

from __future__ import annotations

import time

import numpy as np

from .db_data import (
    DIM,
    FPS,
    FRAMES,
    QUERIES,
    RUNS,
    STREAMS,
    K,
    embedded_server,
    server_versions,
    synthetic_video,
)
from .db_process import PROCESS_TRIES, process_runs_dir, recorder_process
from .db_search import search
from .db_thumbnails import default_thumbnail, thumbnail_cost
from .db_writer import insert


def main() -> dict:
    started = time.perf_counter()
    video = synthetic_video(FRAMES)
    consecutive = float(np.mean(np.sum(video.vectors[1:2000] * video.vectors[:1999], axis=1)))
    print(
        f"synthetic video: {len(video.seq)} frames of {DIM} dims, {RUNS} runs x {STREAMS} cameras at {FPS:g} "
        f"frames/s; consecutive cosine {consecutive:.3f} (generated in {time.perf_counter() - started:.0f} s)"
    )
    result: dict = {"frames": len(video.seq), "dim": DIM, "consecutive_cosine": consecutive}
    with embedded_server() as (url, home):
        result["server"] = server_versions(url)
        print(f"server: {result['server']}")
        print(
            "insert (the recorder's FrameWriter: batches of binary COPY, each committed; rows that gather "
            "while one is written go out together):"
        )
        main_insert = insert(url, home, "bench", video)
        result["insert"] = main_insert
        print(
            f"  {main_insert['rows']} embeddings in {main_insert['seconds']:.1f} s: "
            f"{main_insert['rows_per_s']:,.0f}/s (first run {main_insert['rows_per_s_first_run']:,.0f}/s, last "
            f"{main_insert['rows_per_s_last_run']:,.0f}/s); {main_insert['keyframes']} keyframes in the HNSW index; "
            f"--db-batch {main_insert['batch_rows']}, {main_insert['rows_per_commit']:,.0f} rows per commit; "
            f"segmenter {main_insert['segmenter_us_per_frame']:.1f} us/frame; "
            f"table {main_insert['table_mb']:.0f} MB",
            flush=True,
        )
        few = min(20000, len(video.seq))
        busy = insert(url, home, "busy", video, every_frame_a_keyframe=True, limit=few)
        result["insert_every_frame_a_keyframe"] = busy
        print(
            f"  every frame a keyframe (each row an HNSW insert), {busy['rows']} rows: {busy['rows_per_s']:,.0f}/s",
            flush=True,
        )
        # Three times, the median: on a small shared machine one run of a few seconds moves by 20%.
        with process_runs_dir() as runs_dir:
            tries = [
                recorder_process(url, runs_dir, video, min(100_000, len(video.seq)), name=f"process{n}")
                for n in range(PROCESS_TRIES)
            ]
        rates = sorted(t["rows_per_s"] for t in tries)
        process = {**tries[0], "rows_per_s": float(np.median(rates)), "rows_per_s_tries": rates}
        result["insert_recorder_process"] = process
        print(
            f"  the whole recorder process (`encoders record`, records over its session with the core, acknowledged "
            f"once durable; run files too), "
            f"{process['rows']} records of {process['streams']} streams: {process['rows_per_s']:,.0f}/s "
            f"(median of {len(rates)}: {', '.join(f'{r:,.0f}' for r in rates)})",
            flush=True,
        )
        cost = thumbnail_cost()
        result["thumbnail_cost"] = cost
        thumb = default_thumbnail()
        thumbs = insert(url, home, "thumbs", video, thumbnail=thumb, limit=few)
        result["insert_with_thumbnails"] = thumbs
        print(
            f"  with a thumbnail ({len(thumb)} bytes) in every row (--thumbnails all, the default), "
            f"{thumbs['rows']} rows: {thumbs['rows_per_s']:,.0f}/s",
            flush=True,
        )
        key_thumbs = insert(url, home, "keythumbs", video, thumbnail=thumb, thumbnails="keyframes", limit=few)
        result["insert_with_keyframe_thumbnails"] = key_thumbs
        print(
            f"  with a thumbnail on keyframes only (--thumbnails keyframes), {key_thumbs['rows']} rows: "
            f"{key_thumbs['rows_per_s']:,.0f}/s",
            flush=True,
        )
        print(
            "  making a thumbnail (a worker's CPU, one core, per frame it embeds): "
            + ", ".join(f"{size} frame {c['ms_per_frame']:.2f} ms" for size, c in cost.items()),
            flush=True,
        )
        print(f"search ({QUERIES} queries of each kind, k={K}, Store.nearest as `encoders search` runs it):")
        result["search"] = search(main_insert["database"], video, QUERIES)
    result["seconds"] = time.perf_counter() - started
    return result
