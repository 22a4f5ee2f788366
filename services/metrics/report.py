"""What the core says about itself: Stats every second (per stream, on the metrics publisher),
a log line per stream every ten seconds. Its warnings about bad input are bounded
(shared/complaints.py), and their counts go out in every Stats.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from encoders.shared import zmqio
from encoders.shared.messages import Stats

if TYPE_CHECKING:
    from .service import Core

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

    def tick(self, core: Core, now: float) -> None:
        if now - self.stats_at >= STATS_EVERY:
            self.stats_at = now
            self._stats(core)
        if now - self.log_at >= LOG_EVERY:
            self.log_at = now
            for name, state in core.streams.streams.items():
                totals = core.streams.totals(name)
                self.log.info(log_line(name, totals, state.drift.fps(), state.order.waiting()))

    def _stats(self, core: Core) -> None:
        """Each stream's Stats: its counts and rates, and the core's (workers, capacity, the recorder's
        records, sessions by role, complaints)."""
        broker = core.broker
        shared: dict[str, Any] = {
            **core.counters,
            "streams_refused": core.ingests.streams_refused,
            **core.complain.counts,
            **(core.delivery.stats() if core.delivery is not None else {}),
            "workers": len(broker.workers),
            # Results of another model or length than the pipeline's, refused (models.py); by worker in Prometheus
            "refused_results": sum(core.model.refused_results.values()),
            "capacity": broker.capacity,
            "in_use": broker.in_use,
            **{f"sessions_{role}": len(core.sessions.of_role(role)) for role in ROLES},
        }
        for name, state in core.streams.streams.items():
            mine = {
                "fps": round(state.drift.fps(), 2),
                "waiting": broker.queued(name),  # frames numbered, waiting for a worker
                "outcomes_waiting": state.order.waiting(),  # behind a missing one
                "lost_max_pending": state.order.forced,  # given up: more than max_pending waited
                # Its ingest's clock against the core's at its latest capture (clocks.py); ahead: > 0
                "clock_offset_s": _rounded(core.ingests.clocks.offsets.get(name)),
            }
            counters = stats_counters(core.streams.totals(name), mine, shared)
            zmqio.send(core.metrics_pub, Stats("metrics", name, counters), topic=True)
