"""What `encoders events` and `encoders runs` list (scene changes and alerts, runs: rows for a table, JSON or
CSV), and the web page's timeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from . import search_sql as sql
from .filters import Filters

# (run name, the folder the recorder wrote it in) -> that run folder as seen from here
RunFolder = Callable[[str, str | None], Path]


def events(conn: psycopg.Connection, filters: Filters, limit: int, folder: RunFolder) -> list[dict[str, Any]]:
    """Scene changes and alerts (frozen, blackout), oldest first."""
    query, params = sql.events_sql(filters, limit)
    out = []
    for run_id, run, stream, seq, t, kind, value, drift, mean, std, snap, recorded in conn.execute(query, params):
        out.append(
            {
                "run_id": run_id,
                "run": run,
                "stream": stream,
                "seq": int(seq),
                "time": t,
                "kind": kind,
                "value": value,
                "drift": drift,
                "window_mean": mean,
                "window_std": std,
                "snapshot": str(folder(run, recorded) / snap) if snap else None,
            }
        )
    return out


def runs(
    conn: psycopg.Connection,
    limit: int,
    run_ids: tuple[int, ...] | None,
    folder: RunFolder,
    *,
    frames_table: bool = True,
) -> list[dict[str, Any]]:
    """Runs, oldest first, with their frame and scene-change counts and what their summary says."""
    query, params = sql.runs_sql(run_ids, limit, frames_table=frames_table)
    out = []
    for rid, name, started, ended, model, dim, stored, recorded, frames, scenes in conn.execute(query, params):
        summary = stored or {}
        out.append(
            {
                "id": rid,
                "name": name,
                "started": started,
                "ended": ended,
                "duration_s": (ended - started).total_seconds() if started and ended else None,
                "model": model,
                "dim": dim,
                "streams": sorted(summary.get("streams") or {}),
                "frames": int(frames),
                "scene_changes": int(scenes),
                "drift_mean": drift_mean(summary),
                "dir": str(folder(name, recorded)),
                "summary": summary or None,
            }
        )
    return out


def drift_mean(summary: dict) -> float | None:
    """Mean drift over the run's streams, weighted by their counts (from summary.json)."""
    parts = [s.get("drift") or {} for s in (summary.get("streams") or {}).values()]
    parts = [d for d in parts if d.get("count") and d.get("mean") is not None]
    total = sum(d["count"] for d in parts)
    return sum(d["mean"] * d["count"] for d in parts) / total if total else None


def timeline(
    conn: psycopg.Connection, filters: Filters, points: int, folder: RunFolder, *, events_limit: int = 1000
) -> dict[str, Any]:
    """Drift over a period, at most ``points`` buckets a stream, with the scene changes and
    alerts in it: what the web page's timeline draws. The period is the filters' since and
    until, or the frames' own first and last."""
    query, params = sql.timeline_range_sql(filters)
    first, last = conn.execute(query, params).fetchone() or (None, None)
    start, end = filters.since or first, filters.until or last
    if start is None or end is None:
        return {"since": None, "until": None, "step_s": None, "streams": {}, "events": []}
    step = max((end - start).total_seconds() / max(1, points), 0.001)
    query, params = sql.timeline_sql(filters)
    streams: dict[str, list[list[Any]]] = {}
    for stream, _bucket, t, mean, peak, run, seq in conn.execute(query, {**params, "start": start, "step": step}):
        streams.setdefault(stream, []).append([t.isoformat(), mean, peak, run, int(seq)])
    return {
        "since": start.isoformat(),
        "until": end.isoformat(),
        "step_s": step,
        "streams": streams,
        "events": [
            {**e, "time": e["time"].isoformat(), "snapshot": None} for e in events(conn, filters, events_limit, folder)
        ],
    }


def frame_thumbnail(conn: psycopg.Connection, run: str, stream: str, seq: int) -> bytes | None:
    """A stored frame's thumbnail (or its keyframe's), None if it has none or is not there."""
    row = conn.execute(sql.FRAME_THUMBNAIL, {"run": run, "stream": stream, "seq": seq}).fetchone()
    return bytes(row[0]) if row and row[0] is not None else None
