"""The SQL of search, scene changes and runs, built from filters; every value is a parameter.

Nearest frames are found in two stages (see schema.py for why):

1. the keyframes nearest to the query: through the HNSW index, or, when a filter leaves
   few keyframes, by ranking those keyframes exactly (a B-tree finds them);
2. every frame of those keyframes' segments, ranked exactly, filtered, best ``k`` kept.

pgvector 0.6 (the embedded server) has no iterative index scans: an HNSW scan returns at
most ``hnsw.ef_search`` rows and a filter is applied after it, so a selective filter
starves it. Hence the choice in ``choose_plan``: exact ranking of the keyframes when the
filter leaves few of them, otherwise the index with ``ef_search`` raised by how selective
the filter is (and, on a server with pgvector >= 0.8, its iterative scan on top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .config import EF_SEARCH_MAX
from .filters import Filters
from .hits import Hit
from .schema import HNSW_INDEX


def where(
    filters: Filters, alias: str = "", *, keyframes: bool = False, segment_span_s: float = 0.0
) -> tuple[list[str], dict[str, Any]]:
    """Conditions (to be joined with AND) and their parameters.

    ``keyframes``: the conditions on the keyframes whose segments may hold matching frames:
    a segment begins up to ``segment_span_s`` before its last frame, so ``since`` is moved
    back by that much.
    """
    col = f"{alias}." if alias else ""
    conds: list[str] = []
    params: dict[str, Any] = {}
    if filters.run_ids is not None:
        conds.append(f"{col}run_id = ANY(%(run_ids)s)")
        params["run_ids"] = list(filters.run_ids)
    if filters.stream is not None:
        conds.append(f"{col}stream = %(stream)s")
        params["stream"] = filters.stream
    if filters.since is not None:
        if keyframes:
            conds.append(f"{col}captured_at >= %(segments_since)s")
            params["segments_since"] = filters.since - timedelta(seconds=segment_span_s)
        else:
            conds.append(f"{col}captured_at >= %(since)s")
            params["since"] = filters.since
    if filters.until is not None:
        conds.append(f"{col}captured_at < %(until)s")
        params["until"] = filters.until
    return conds, params


@dataclass(frozen=True)
class Plan:
    exact_keyframes: bool  # rank the filtered keyframes exactly instead of through the index
    candidates: int  # keyframes whose segments are ranked
    ef_search: int  # hnsw.ef_search for the index scan
    iterative: bool = False  # pgvector >= 0.8: hnsw.iterative_scan

    def describe(self) -> str:
        if self.exact_keyframes:
            return f"exact ranking of the filtered keyframes, {self.candidates} segments"
        return (
            f"HNSW index ({HNSW_INDEX}, ef_search {self.ef_search}{', iterative scan' if self.iterative else ''}),"
            f" {self.candidates} segments"
        )


def choose_plan(
    *,
    k: int,
    candidates: int,
    ef_search: int,
    exact_limit: int,
    filtered: bool,
    matching_keyframes: int | None = None,
    total_keyframes: int | None = None,
    has_index: bool = True,
    iterative_scans: bool = False,
) -> Plan:
    """How to find the keyframes: ``matching_keyframes`` is the count of keyframes the filter
    leaves, counted up to ``exact_limit`` + 1; ``total_keyframes`` an estimate of all of them."""
    n = max(candidates, k)
    if not has_index:
        return Plan(True, n, ef_search)
    if not filtered:
        return Plan(False, n, min(EF_SEARCH_MAX, max(ef_search, n)))
    if matching_keyframes is not None and matching_keyframes <= exact_limit:
        return Plan(True, n, ef_search)
    # The index returns ef_search keyframes before the filter; a filter keeping a fraction s
    # of them leaves about s * ef_search: ask for twice the candidates' worth.
    matching = max(1, matching_keyframes or 1)
    selectivity = min(1.0, matching / max(total_keyframes or 0, matching))
    ef = min(EF_SEARCH_MAX, max(ef_search, n, math.ceil(2 * n / selectivity)))
    return Plan(False, n, ef, iterative_scans)


def count_keyframes_sql(filters: Filters, segment_span_s: float, cap: int) -> tuple[str, dict[str, Any]]:
    """How many keyframes the filter leaves, counted up to ``cap`` (B-tree indexes on keyframes serve it)."""
    conds, params = where(filters, keyframes=True, segment_span_s=segment_span_s)
    sql = f"SELECT count(*) FROM (SELECT 1 FROM frames WHERE {' AND '.join(['keyframe', *conds])} LIMIT %(cap)s) s"
    return sql, {**params, "cap": cap}


# The planner's estimate of the keyframes in the index (-1 or missing before the first ANALYZE).
TOTAL_KEYFRAMES = f"SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass('{HNSW_INDEX}')"


def nearest_sql(filters: Filters, plan: Plan, *, segment_span_s: float) -> tuple[str, dict[str, Any]]:
    """The ``k`` nearest frames to ``%(q)s``, nearest first. Parameters q and k are the caller's."""
    kconds, kparams = where(filters, keyframes=True, segment_span_s=segment_span_s)
    fconds, fparams = where(filters, "f")
    # "+ 0" hides the ORDER BY from the HNSW index: the planner then ranks every keyframe the
    # filter leaves, found through the B-tree indexes on keyframes.
    order = "(embedding <=> %(q)s) + 0" if plan.exact_keyframes else "embedding <=> %(q)s"
    sql = f"""
WITH keys AS MATERIALIZED (
    SELECT run_id, stream, seq FROM frames
    WHERE {" AND ".join(["keyframe", *kconds])}
    ORDER BY {order}
    LIMIT %(candidates)s)
SELECT f.run_id, r.name AS run, f.stream, f.seq, f.captured_at, f.embedding <=> %(q)s AS distance, f.drift,
       f.snapshot_path, f.keyframe_seq, r.config->'run'->>'dir' AS run_dir
FROM keys
JOIN frames f ON f.run_id = keys.run_id AND f.stream = keys.stream AND f.keyframe_seq = keys.seq
JOIN runs r ON r.id = f.run_id
{"WHERE " + " AND ".join(fconds) if fconds else ""}
ORDER BY distance, f.run_id, f.stream, f.seq
LIMIT %(k)s"""
    return sql, {**kparams, **fparams, "candidates": plan.candidates}


@dataclass
class Nearest:
    """A row of ``nearest_sql``'s query, by its columns' names (psycopg's class_row makes it)."""

    run_id: int
    run: str
    stream: str
    seq: int
    captured_at: datetime | None
    distance: float  # cosine distance to the query
    drift: float | None
    snapshot_path: str | None
    keyframe_seq: int
    run_dir: str | None  # where its recorder wrote the run

    def hit(self, rank: int, run_dir: Path) -> Hit:
        return Hit(
            rank,
            self.run_id,
            self.run,
            self.stream,
            int(self.seq),
            self.captured_at,
            1.0 - float(self.distance),
            None if self.drift is None else float(self.drift),
            int(self.keyframe_seq),
            run_dir,
        )


def plan_settings(plan: Plan) -> list[str]:
    """SET LOCAL statements for the search's transaction (values are ints and fixed words)."""
    out = [f"SET LOCAL hnsw.ef_search = {int(plan.ef_search)}"]
    if plan.iterative and not plan.exact_keyframes:
        out.append("SET LOCAL hnsw.iterative_scan = relaxed_order")
    return out


# The picture of each hit: its own snapshot, or the latest of its stream before it, periodic or
# of a scene change (after a scene change, that one shows the view the hit is in).
SNAPSHOTS = """
SELECT h.i, s.seq, s.path
FROM unnest(%(run_ids)s::bigint[], %(streams)s::text[], %(seqs)s::bigint[]) WITH ORDINALITY AS h(run_id, stream, seq, i)
CROSS JOIN LATERAL (
    SELECT seq, path FROM (
        (SELECT seq, snapshot_path AS path FROM frames
         WHERE run_id = h.run_id AND stream = h.stream AND seq <= h.seq AND snapshot_path IS NOT NULL
         ORDER BY seq DESC LIMIT 1)
        UNION ALL
        (SELECT seq, snapshot_path FROM scene_changes
         WHERE run_id = h.run_id AND stream = h.stream AND seq <= h.seq AND snapshot_path IS NOT NULL
         ORDER BY seq DESC LIMIT 1)) latest
    ORDER BY seq DESC LIMIT 1) s"""

# The thumbnail of each hit: its own, or its keyframe's (within keyframe_drift of it by construction).
THUMBNAILS = """
SELECT h.i, coalesce(f.thumbnail, kf.thumbnail)
FROM unnest(%(run_ids)s::bigint[], %(streams)s::text[], %(seqs)s::bigint[], %(keyframe_seqs)s::bigint[])
     WITH ORDINALITY AS h(run_id, stream, seq, keyframe_seq, i)
JOIN frames f ON f.run_id = h.run_id AND f.stream = h.stream AND f.seq = h.seq
LEFT JOIN frames kf ON kf.run_id = h.run_id AND kf.stream = h.stream AND kf.seq = h.keyframe_seq"""

# One frame's embedding, for --frame.
FRAME_VECTOR = """
SELECT f.embedding, f.stream, r.model FROM frames f JOIN runs r ON r.id = f.run_id
WHERE f.run_id = %(run_id)s AND f.seq = %(seq)s AND (%(stream)s::text IS NULL OR f.stream = %(stream)s)
ORDER BY f.stream"""

# The longest segment of any run, in seconds (runs recorded before segments existed: 0).
SEGMENT_SPAN = "SELECT coalesce(max((config->'recorder'->>'keyframe_max_s')::float8), 0) FROM runs"


def events_sql(filters: Filters, limit: int) -> tuple[str, dict[str, Any]]:
    conds, params = where(filters, "e")
    # Scene changes and alerts (the events table) in one timeline; a scene change's value is its drift.
    sql = f"""
SELECT e.run_id, r.name AS run, e.stream, e.seq, e.captured_at, e.kind, e.value, e.drift, e.window_mean,
       e.window_std, e.snapshot_path, r.config->'run'->>'dir' AS run_dir
FROM (SELECT run_id, stream, seq, captured_at, 'scene_change' AS kind, drift::double precision AS value, drift,
             window_mean, window_std, snapshot_path FROM scene_changes
      UNION ALL
      SELECT run_id, stream, seq, captured_at, kind, value, NULL, NULL, NULL, NULL FROM events) e
JOIN runs r ON r.id = e.run_id
{"WHERE " + " AND ".join(conds) if conds else ""}
ORDER BY e.captured_at, e.run_id, e.stream, e.seq, e.kind
LIMIT %(limit)s"""
    return sql, {**params, "limit": limit}


def runs_sql(run_ids: tuple[int, ...] | None, limit: int, *, frames_table: bool = True) -> tuple[str, dict[str, Any]]:
    """Runs, oldest first, with their frame and scene-change counts (frames is absent until the
    first frame is recorded)."""
    cond = "WHERE r.id = ANY(%(run_ids)s)" if run_ids is not None else ""
    frames = "(SELECT count(*) FROM frames f WHERE f.run_id = r.id)" if frames_table else "0::bigint"
    sql = f"""
SELECT r.id, r.name, r.started_at, r.ended_at, r.model, r.dim, r.summary, r.config->'run'->>'dir' AS run_dir,
       {frames} AS frames,
       (SELECT count(*) FROM scene_changes e WHERE e.run_id = r.id) AS scene_changes
FROM runs r
{cond}
ORDER BY r.started_at NULLS FIRST, r.id
LIMIT %(limit)s"""
    return sql, {"run_ids": list(run_ids or ()), "limit": limit}


def timeline_range_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """The first and last capture time of the frames in scope."""
    conds, params = where(filters, "f")
    return f"SELECT min(f.captured_at), max(f.captured_at) FROM frames f {_where(conds)}", params


def timeline_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """Each stream's drift in time buckets of %(step)s seconds from %(start)s: the bucket's first
    capture time, mean and largest drift, and its first frame (run, seq) for a picture of it."""
    conds, params = where(filters, "f")
    sql = f"""
SELECT f.stream, floor(extract(epoch FROM f.captured_at - %(start)s) / %(step)s) AS bucket,
       min(f.captured_at), avg(f.drift), max(f.drift),
       (array_agg(r.name ORDER BY f.captured_at))[1], (array_agg(f.seq ORDER BY f.captured_at))[1]
FROM frames f JOIN runs r ON r.id = f.run_id
{_where(conds)}
GROUP BY f.stream, bucket
ORDER BY f.stream, bucket"""
    return sql, params


def _where(conds: list[str]) -> str:
    return "WHERE " + " AND ".join(conds) if conds else ""


# One frame's stored thumbnail, or its keyframe's: what the timeline shows when a moment is clicked.
FRAME_THUMBNAIL = """
SELECT coalesce(f.thumbnail, kf.thumbnail)
FROM frames f JOIN runs r ON r.id = f.run_id
LEFT JOIN frames kf ON kf.run_id = f.run_id AND kf.stream = f.stream AND kf.seq = f.keyframe_seq
WHERE (r.name = %(run)s OR r.id::text = %(run)s) AND f.stream = %(stream)s AND f.seq = %(seq)s"""
