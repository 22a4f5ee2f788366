"""A stream's summary.json, accumulated record by record in constant memory."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from encoders.shared.messages import MetricsRecord

# The frame counts of summary.json, as metrics reports them (published comes from ingest).
COUNT_KEYS = ("published", "embedded", "dropped", "skipped", "lost", "late")


class RunningStats:
    """Count, mean, population std (ddof=0), min and max, by Welford's update (no list kept)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.count) if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, tz=UTC).isoformat()


class StreamSummary:
    def __init__(self, stream: str):
        self.stream = stream
        self.records = 0
        self.model: str | None = None
        self.dim: int | None = None
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.drift = RunningStats()
        self.similarity = RunningStats()
        self.snapshots = 0
        self.running_counts: dict[str, Any] = {}
        self.final_counts: dict[str, Any] | None = None  # from EndOfStream

    def add(self, rec: MetricsRecord, *, snapshot: bool = False) -> None:
        self.records += 1
        self.model = rec.model
        self.dim = int(rec.vector.size)
        if self.first_t is None:
            self.first_t, self.first_seq = rec.t_capture, rec.seq
        self.last_t, self.last_seq = rec.t_capture, rec.seq
        if rec.drift is not None:
            self.drift.add(float(rec.drift))
        if rec.similarity is not None:
            self.similarity.add(float(rec.similarity))
        if snapshot:
            self.snapshots += 1
        if rec.counts:
            self.running_counts = dict(rec.counts)

    def end(self, counts: dict[str, Any]) -> None:
        self.final_counts = dict(counts or {})

    def frames(self) -> dict[str, Any]:
        """Frame counts: metrics' final totals when the stream ended, else its latest running ones."""
        base = self.final_counts if self.final_counts is not None else self.running_counts
        out = {key: base.get(key) for key in COUNT_KEYS}
        if out["embedded"] is None:
            out["embedded"] = self.records
        return out

    def duration(self) -> float:
        """Capture time from the first to the last embedded frame."""
        if self.first_t is None or self.last_t is None:
            return 0.0
        return self.last_t - self.first_t

    def effective_fps(self) -> float | None:
        """Embedded frames per second of capture time: (N - 1) intervals over the duration."""
        d = self.duration()
        return (self.records - 1) / d if d > 0 else None

    def to_dict(self, *, npz_batches: int = 0, db_rows: int = 0) -> dict[str, Any]:
        sim = self.similarity.to_dict()
        return {
            "stream": self.stream,
            "model": self.model,
            "dim": self.dim,
            "frames": self.frames(),
            "counts_from": "end_of_stream" if self.final_counts is not None else "last_record",
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "drift": self.drift.to_dict(),
            "similarity": {"mean": sim["mean"], "min": sim["min"]},
            "duration_s": self.duration(),
            "effective_fps": self.effective_fps(),
            "start_time": iso(self.first_t),
            "end_time": iso(self.last_t),
            "snapshots": self.snapshots,
            "npz_batches": npz_batches,
            "db_rows": db_rows,
            "ended": self.final_counts is not None,
        }
