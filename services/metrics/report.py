"""What the core says about itself: Stats every second (per stream, on the metrics publisher),
a log line per stream every ten seconds. Its warnings about bad input are bounded
(shared/complaints.py), and their counts go out in every Stats.

``Reporter`` reads the core's progress (progress.py) and returns the Stats to publish; the core
publishes them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from encoders.shared.messages import Stats

from .progress import Progress

STATS_EVERY = 1.0  # seconds between Stats messages
LOG_EVERY = 10.0  # seconds between each stream's log line
ROLES = ("ingest", "worker", "recorder", "viewer", "control")


def stats_counters(*parts: Mapping[str, Any]) -> dict[str, int | float | None]:
    """One Stats' counters from several mappings: numbers only (a Stats carries nothing else), at most 256."""
    out: dict[str, int | float | None] = {}
    for part in parts:
        for key, value in part.items():
            if len(out) >= 256:
                return out
            if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
                out[str(key)[:64]] = value
    return out


def log_line(stream: str, totals: Mapping[str, Any], fps: float, waiting: int) -> str:
    """A stream's line in the log every ten seconds."""
    counts = ", ".join(f"{totals.get(k, 0)} {k}" for k in ("published", "embedded", "dropped", "skipped", "lost"))
    late = totals.get("late", 0)
    return f"{stream}: {counts}{f', {late} late' if late else ''}; {fps:.1f} embedded/s; {waiting} outcomes waiting"


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class Reporter:
    """The core's Stats and log lines, when due."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.stats_at = self.log_at = float("-inf")

    def tick(self, progress: Progress, now: float) -> list[Stats]:
        """The Stats due now (each stream's, once a second); each stream's log line when due."""
        out = []
        if now - self.stats_at >= STATS_EVERY:
            self.stats_at = now
            out = self._stats(progress)
        if now - self.log_at >= LOG_EVERY:
            self.log_at = now
            for stream in progress.streams:
                self.log.info(log_line(stream.name, stream.totals, stream.fps, stream.outcomes_waiting))
        return out

    def _stats(self, progress: Progress) -> list[Stats]:
        """Each stream's Stats: its counts and rates, and the core's (workers, capacity, the recorder's
        records, sessions by role, complaints)."""
        shared: dict[str, Any] = {
            **progress.counters,
            "streams_refused": progress.streams_refused,
            **progress.complaints,
            **(progress.records or {}),
            "workers": progress.workers,
            # Results of another model or length than the pipeline's, refused (models.py); by worker in Prometheus
            "refused_results": progress.refused_results,
            "capacity": progress.capacity,
            "in_use": progress.in_use,
            **{f"sessions_{role}": progress.sessions.get(role, 0) for role in ROLES},
        }
        out = []
        for stream in progress.streams:
            mine = {
                "fps": round(stream.fps, 2),
                "waiting": stream.queued,  # frames numbered, waiting for a worker
                "outcomes_waiting": stream.outcomes_waiting,  # behind a missing one
                "lost_max_pending": stream.forced,  # given up: more than max_pending waited
                # Its ingest's clock against the core's at its latest capture (clocks.py); ahead: > 0
                "clock_offset_s": _rounded(stream.clock_offset),
            }
            out.append(Stats("metrics", stream.name, stats_counters(stream.totals, mine, shared)))
        return out
