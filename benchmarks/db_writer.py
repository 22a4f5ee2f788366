"""The database writer benchmark: embeddings/s that the recorder's FrameWriter (batches of
binary COPY, each committed) stores in a pgvector table with its HNSW index on keyframes."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.writer import FrameWriter, writer_thread
from encoders.shared.spool import Spool
from encoders.shared.storage.connection import Database

from .db_data import DIM, RUNS, T0, Video, capture_order, frame_rows, new_database, scalar


def insert(
    url: str,
    home: Path,
    name: str,
    video: Video,
    *,
    every_frame_a_keyframe: bool = False,
    thumbnail: bytes | None = None,
    thumbnails: str = "all",
    limit: int | None = None,
) -> dict:
    """Store the video's frames through the recorder's writer; embeddings/s from the first row
    handed over to the last one committed."""
    db_url = new_database(url, name)
    db = Database.open(db_url, wait_s=10)
    cfg = RecorderConfig()
    run_ids: dict[int, int] = {}
    for r in range(1, RUNS + 1):
        run_id = db.claim_run(f"{name}_{r}", datetime.fromtimestamp(T0 + (r - 1) * 86400, UTC))
        assert run_id is not None, f"run {name}_{r} is in the new database already"
        run_ids[r] = run_id
        db.update_run(run_id, config={"recorder": cfg.describe()})
    rows, segment_s = frame_rows(
        video, run_ids, every_frame_a_keyframe=every_frame_a_keyframe, thumbnail=thumbnail, thumbnails=thumbnails
    )
    rows = capture_order(rows)[:limit]
    spool_dir = home / name
    spool_dir.mkdir()
    writers = {}
    for r, run_id in run_ids.items():
        writers[run_id] = FrameWriter(
            db,
            Spool(spool_dir / f"{r}.spool"),
            run_id=run_id,
            batch_rows=cfg.db_batch,
            flush_s=cfg.db_flush_s,
            executor=writer_thread(),  # as the recorder writes: on a thread of its own
        )
        writers[run_id].set_model("synthetic/none", DIM)
    per_run = []
    start = time.perf_counter()
    current, run_start, run_rows = None, start, 0
    for row in rows:
        if row.run_id != current:
            if current is not None:
                assert writers[current].close(10.0)
                per_run.append(run_rows / (time.perf_counter() - run_start))
            current, run_start, run_rows = row.run_id, time.perf_counter(), 0
        writers[current].add(row)
        run_rows += 1
    assert current is not None, "no rows"
    assert writers[current].close(10.0)
    commits = sum(w.commits for w in writers.values())
    per_run.append(run_rows / (time.perf_counter() - run_start))
    elapsed = time.perf_counter() - start
    db.close()
    with psycopg.connect(db_url) as conn:
        counted = conn.execute("SELECT count(*), count(*) FILTER (WHERE keyframe) FROM frames").fetchone()
        assert counted is not None
        stored, keyframes = counted
        size = scalar(conn, "SELECT pg_total_relation_size('frames')")
    assert stored == len(rows), (stored, len(rows))
    return {
        "rows": stored,
        "keyframes": keyframes,
        "seconds": elapsed,
        "rows_per_s": stored / elapsed,
        "rows_per_s_first_run": per_run[0],
        "rows_per_s_last_run": per_run[-1],
        "batch_rows": cfg.db_batch,
        "rows_per_commit": stored / max(1, commits),
        "segmenter_us_per_frame": segment_s * 1e6,
        "table_mb": size / 2**20,
        "database": db_url,
    }
