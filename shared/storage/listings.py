"""What `encoders events` and `encoders runs` list: scene changes and runs, as rows for a table, JSON or CSV."""

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
