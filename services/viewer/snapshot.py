"""What the web page shows, as plain JSON-able data built from the viewer's state.

The main loop builds a snapshot a few times a second and hands it to the web server's
thread, which never touches ViewerState (only the main loop's thread does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from encoders.shared.messages import Stats

from .scenes import SceneChange
from .state import StreamState, ViewerState


def finite(value: Any) -> float | None:
    """JSON has no NaN or infinity: an unknown number is null."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def newest_counts(st: StreamState, metrics_stats: Stats | None) -> dict:
    """The stream's counts (embedded, dropped, skipped, lost) from whichever metrics sent last:
    a record (one per embedded frame) or its Stats (once a second, even when nothing is embedded)."""
    rec = st.metrics
    if rec is None:
        return dict(metrics_stats.counters) if metrics_stats else {}
    if metrics_stats is not None and metrics_stats.t > rec.t_metrics:
        return {**rec.counts, **metrics_stats.counters}
    return dict(rec.counts)


def stream_view(st: StreamState, stats: Mapping[tuple[str, str], Stats], now: float) -> dict[str, Any]:
    rec = st.metrics
    ingest = stats.get(("ingest", st.stream))
    core = stats.get(("metrics", st.stream))
    ingest_counters = ingest.counters if ingest else {}
    counts = newest_counts(st, core)

    def either(key: str, default: Any = None) -> Any:
        """The ingest's counter (its Stats, which the core passes on on the frames publisher); else the
        core's, which numbers the frames and hands them to workers, so may count them itself."""
        for counters in (ingest_counters, core.counters if core else {}):
            if counters.get(key) is not None:
                return counters[key]
        return default

    return {
        "stream": st.stream,
        "ended": st.ended,
        "seq": rec.seq if rec else None,
        "t_capture": finite(rec.t_capture) if rec else None,
        "similarity": finite(rec.similarity) if rec else None,
        "drift": finite(rec.drift) if rec else None,
        "scene_change": bool(rec.scene_change) if rec else False,
        "rolling": {k: finite(v) for k, v in rec.rolling.items()} if rec else {},
        "fps_shown": round(st.display_fps.rate(now), 2),
        "fps_embedded": finite(rec.fps) if rec else None,
        "fps_in": finite(ingest_counters.get("fps")),
        # Ingest's own count once its Stats arrive; until then, what reached this viewer.
        "frames_in": either("published", st.frames_received),
        "embedded": counts.get("embedded"),
        "dropped": counts.get("dropped", ingest_counters.get("dropped")),
        "skipped": counts.get("skipped"),
        "lost": counts.get("lost"),
        "workers": either("workers"),
        "workers_free": either("workers_free"),
    }


def totals(streams: list[dict[str, Any]]) -> dict[str, Any]:
    def total(key: str):
        values = [s[key] for s in streams if s[key] is not None]
        if not values:
            return None
        # Huge finite counters can add up to infinity, which JSON has not: unknown, then.
        return finite(sum(values)) if any(isinstance(v, float) for v in values) else sum(values)

    workers = [s["workers"] for s in streams if s["workers"] is not None]
    fps = total("fps_embedded")
    return {
        "streams": len(streams),
        "frames_in": total("frames_in"),
        "embedded": total("embedded"),
        "dropped": total("dropped"),
        # Every worker takes frames from every ingest, so each ingest counts the same
        # workers: the number of workers is the largest count, not the sum.
        "workers": max(workers) if workers else None,
        "fps": round(fps, 2) if fps is not None else None,
    }


def drift_window(state: ViewerState) -> dict[str, dict[str, Any]]:
    """Each stream's rolling drift window, and how many points were ever added to it; a gap
    between two epochs of a stream is a point whose drift is null (the page draws no line across it)."""
    return {
        name: {"added": st.drift_added, "points": [[t, finite(d)] for t, d in st.drift]}
        for name, st in sorted(state.streams.items())
        if st.drift
    }


def snapshot(state: ViewerState, now: float, counters: Mapping[str, int], waiting: str | None = None) -> dict[str, Any]:
    """``waiting``: whom the viewer waits for before it can subscribe (None once subscribed)."""
    streams = [stream_view(st, state.stats, now) for _, st in sorted(state.streams.items())]
    return {
        "waiting": waiting,
        "streams": streams,
        "totals": totals(streams),
        "viewer": {**state.counters, **counters},
        "history": state.history,
        "drift": drift_window(state),
    }


def drift_since(window: Mapping[str, Mapping[str, Any]], sent: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The drift points one client has not had yet (``sent``: stream -> 'added' last sent, updated).

    A client new to a stream, or one that fell further behind than the window, gets the
    whole window with ``reset``; otherwise only the new points, to append.
    """
    out = {}
    for name, d in window.items():
        added, points = d["added"], d["points"]
        before = sent.get(name)
        fresh = None if before is None else added - before
        if fresh is None or fresh < 0 or fresh > len(points):
            out[name] = {"reset": True, "points": points}
        elif fresh:
            out[name] = {"reset": False, "points": points[-fresh:]}
        sent[name] = added
    return out


def scene_view(scene: SceneChange, url: str) -> dict[str, Any]:
    return {
        "stream": scene.stream,
        "seq": scene.seq,
        "t_capture": finite(scene.t_capture),
        "drift": finite(scene.drift),
        "thumbnail": url if scene.thumbnail is not None else None,
        "kinds": list(scene.kinds),
    }
