"""summary.json: each stream's, accumulated record by record in constant memory, and the run's one shape.

Frame counts come from the core: every record carries its stream's running counts in one
life of the core (``core``), and an end of stream the final ones of its life. A core that
restarts counts again from zero, so the summary keeps the last counts of each life and adds
them up (docs/PROTOCOL.md, "Counts"); ``lives`` is written into summary.json, so that a
recorder that resumes the run after a crash goes on from there.

A life of the core that crashed sent no end of stream, and frames it had numbered but not
yet released (or captures that were on their way to it) are in none of its counts. The
ingest's next Hello, to the next life, says how many captures it sent to the dead one, and
that life's ``StreamStart`` passes it on (``previous_core``, ``previous_sent``). The stream's
numbers are consecutive within an epoch, so the dead life's last epoch covered seqs
``first .. first + sent - 1``; those past the last one it released to the recorder are
counted lost. (Exact unless the core died within moments of the epoch's start, before its
``StreamStart`` reached the recorder.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from encoders.shared.messages import MetricsRecord

# The frame counts of summary.json, as metrics reports them (published comes from ingest).
COUNT_KEYS = ("published", "embedded", "dropped", "skipped", "lost", "late")
# Records the recorder could not store (an embedding of another length than the run's, or not
# finite): the core counted them embedded; summary.json counts them here instead, so that
# published = embedded + dropped + skipped + lost + not_stored, and embedded is what was stored.
NOT_STORED = "not_stored"


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


def settled(life: dict[str, Any]) -> dict[str, Any]:
    """A life's counts, with the frames of its last epoch it never accounted for counted lost
    (when the next life passed on what the ingest sent it: see the module's docstring)."""
    first, sent = life.get("epoch_first"), life.get("epoch_sent")
    if isinstance(first, int) and not any(key in life for key in COUNT_KEYS):  # only its start heard: no count yet
        life = {**life, **dict.fromkeys(COUNT_KEYS, 0)}
    counts = {key: life.get(key) for key in COUNT_KEYS}
    if not (isinstance(first, int) and isinstance(sent, int)):
        return counts
    missing = first + sent - 1 - max(life.get("released", first - 1), first - 1)
    outcomes = [v for k in ("embedded", "dropped", "skipped", "lost") if isinstance(v := counts[k], int)]
    if missing > 0 and len(outcomes) == 4:
        counts["lost"] = outcomes[3] + missing
        accounted = sum(outcomes) + missing
        counts["published"] = max(counts["published"] or 0, accounted)
    return counts


def settle_embedded(stream: dict[str, Any]) -> None:
    """A finished stream's summary: embedded is the rows stored; what the core counted embedded
    beyond them never reached the database (records lost on their way: a core that could not
    keep them, a recorder that could not store them) and is counted not stored, so the counts
    still add up and say why."""
    frames, rows = stream["frames"], stream.get("db_rows")
    counted = frames.get("embedded")
    if not isinstance(rows, int) or not isinstance(counted, int):
        return
    if counted > rows:
        frames[NOT_STORED] = (frames.get(NOT_STORED) or 0) + counted - rows
    frames["embedded"] = rows


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
        # The earliest and the latest capture time: not the first and last frame's when an ingest's
        # clock was off and then set right (its captures then go back in time).
        self.min_t: float | None = None
        self.max_t: float | None = None
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.drift = RunningStats()
        self.similarity = RunningStats()
        self.snapshots = 0
        self.lives: dict[str, dict[str, Any]] = {}  # core life -> the last counts it sent
        self.ended = False  # the last word on this stream was its end (EndOfStream)

    def add(self, rec: MetricsRecord, *, snapshot: bool = False, core: str = "") -> None:
        """A record; ``core``: the life of the core it belongs to, when the record does not say."""
        self.model = rec.model
        self.dim = int(rec.vector.size)
        self.add_values(rec.seq, rec.t_capture, rec.similarity, rec.drift, snapshot=snapshot)
        life = self.lives.setdefault(rec.core or core, {})
        life.update(rec.counts)
        life["released"] = max(life.get("released", -1), rec.seq)
        self.ended = False

    def not_stored(self, rec: MetricsRecord, core: str = "") -> None:
        """A record that could not be stored: its counts, and one more not stored in its life
        (kept with the counts, so a resumed run goes on from them)."""
        life = self.lives.setdefault(rec.core or core, {})
        life.update(rec.counts)
        life["released"] = max(life.get("released", -1), rec.seq)
        life[NOT_STORED] = life.get(NOT_STORED, 0) + 1

    def lives_snapshot(self) -> dict[str, dict[str, Any]]:
        """A copy of the counts per life, as they stand now (kept with an acknowledgement: acks.py)."""
        return {core: dict(life) for core, life in self.lives.items()}

    def counts_from(self, rec: MetricsRecord, core: str = "") -> bool:
        """A record sent again: its counts, if later than what its life has (a resumed run). Changed?"""
        life = self.lives.setdefault(rec.core or core, {})
        if not rec.counts or rec.seq <= life.get("released", -1):
            return False
        life.update(rec.counts)
        life["released"] = rec.seq
        return True

    def start(self, first_seq: int, core: str, previous_core: str = "", previous_sent: int = 0) -> None:
        """An epoch of the stream starts in this life of the core; ``previous_core``: the life the
        ingest's last session was with, which ended without accounting for it (it restarted)."""
        life = self.lives.setdefault(core, {})
        life["epoch_first"] = first_seq
        life["released"] = max(life.get("released", -1), first_seq - 1)
        if previous_core and previous_core != core:
            self.lives.setdefault(previous_core, {})["epoch_sent"] = previous_sent

    def add_values(
        self, seq: int, t_capture: float, similarity: float | None, drift: float | None, *, snapshot: bool
    ) -> None:
        """A frame's figures: from a record, or from its row when a run's files are rewritten."""
        self.records += 1
        if self.first_t is None:
            self.first_t, self.first_seq = t_capture, seq
        self.last_t, self.last_seq = t_capture, seq
        self.min_t = t_capture if self.min_t is None else min(self.min_t, t_capture)
        self.max_t = t_capture if self.max_t is None else max(self.max_t, t_capture)
        if drift is not None:
            self.drift.add(float(drift))
        if similarity is not None:
            self.similarity.add(float(similarity))
        if snapshot:
            self.snapshots += 1

    def end(self, counts: dict[str, Any], core: str = "", last_seq: int = -1) -> None:
        """The stream's end: ``counts`` are the final ones of this life of the core."""
        life = self.lives.setdefault(core, {})
        life.update(counts or {})
        life["released"] = max(life.get("released", -1), last_seq)
        self.ended = True

    def restore_counts(self, lives: Any, ended: bool = False) -> None:
        """The counts a summary.json written earlier in this run holds (a resumed run)."""
        if isinstance(lives, dict):
            for core, counts in lives.items():
                if isinstance(counts, dict):
                    self.lives[str(core)] = {k: v for k, v in counts.items() if isinstance(v, int) or v is None}
        self.ended = bool(ended)

    def frames(self) -> dict[str, Any]:
        """Frame counts: each life's last ones (final at an end of stream), added up.

        A count some life does not know (``published`` before the end of a stream, for one)
        is unknown (None) in the total; ``embedded`` unknown falls back to the records seen.
        """
        out: dict[str, Any] = {}
        lives = [settled(life) for life in self.lives.values()]
        for key in COUNT_KEYS:
            values = [life.get(key) for life in lives]
            out[key] = sum(values) if values and all(isinstance(v, int) for v in values) else None
        not_stored = sum(life.get(NOT_STORED) or 0 for life in self.lives.values())
        if out["embedded"] is None:
            out["embedded"] = self.records  # the records stored
        else:
            out["embedded"] = max(0, out["embedded"] - not_stored)
        out[NOT_STORED] = not_stored
        return out

    def duration(self) -> float:
        """Capture time from the earliest to the latest embedded frame: never negative.

        Capture times are the ingest's clock. One that was an hour ahead and then set right (a
        restarted ingest, NTP catching up) makes the later frames older than the first; the core
        warns about such a clock (its ``clock_skew``). From the first to the last frame the
        duration would be negative, so it is from the earliest capture to the latest.
        """
        if self.min_t is None or self.max_t is None:
            return 0.0
        return self.max_t - self.min_t

    def effective_fps(self) -> float | None:
        """Embedded frames per second of capture time: (N - 1) intervals over the duration."""
        d = self.duration()
        rate = (self.records - 1) / d if d > 0 else None
        # Captures a hair apart (a subnormal duration) make an infinite rate: none to tell, and the
        # summary goes into jsonb, which takes no infinity (the fuzz test found it).
        return rate if rate is not None and math.isfinite(rate) else None

    def to_dict(self, *, npz_batches: int = 0, db_rows: int = 0) -> dict[str, Any]:
        sim = self.similarity.to_dict()
        return {
            "stream": self.stream,
            "model": self.model,
            "dim": self.dim,
            "frames": self.frames(),
            "counts_from": "end_of_stream" if self.ended else "last_record",
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "drift": self.drift.to_dict(),
            "similarity": {"mean": sim["mean"], "min": sim["min"]},
            "duration_s": self.duration(),
            "effective_fps": self.effective_fps(),
            "start_time": iso(self.min_t),
            "end_time": iso(self.max_t),
            "snapshots": self.snapshots,
            "npz_batches": npz_batches,
            "db_rows": db_rows,
            "ended": self.ended,
            "lives": {core: dict(counts) for core, counts in self.lives.items()},
        }


def summarise(run: Mapping[str, Any], streams: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """summary.json's one shape: the run, each stream, and their totals."""
    summaries = list(streams.values())
    frames: dict[str, int | None] = {}
    for key in (*COUNT_KEYS, NOT_STORED):
        values = [s["frames"][key] for s in summaries if s["frames"].get(key) is not None]
        # Unknown stays None (no stream ended: nobody said how many were published); with no
        # stream at all, nothing was embedded.
        frames[key] = sum(values) if values else (0 if key == "embedded" and not summaries else None)
    totals = {
        "frames": frames,
        "records": sum(s["records"] for s in summaries),
        "snapshots": sum(s["snapshots"] for s in summaries),
        "npz_batches": sum(s["npz_batches"] for s in summaries),
        "db_rows": sum(s["db_rows"] for s in summaries),
    }
    return {"run": dict(run), "streams": dict(streams), "totals": totals}
