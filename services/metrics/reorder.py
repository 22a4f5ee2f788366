"""Putting one stream's frame outcomes back in sequence order.

Every frame ingest publishes ends in exactly one outcome: an embedding (from a worker),
a drop (ingest had no free worker) or a skip (a worker could not decode it). Workers
finish out of order; this buffer releases outcomes in sequence. A frame whose outcome
never comes (its worker died) is given up after ``max_wait`` seconds and released as
LOST; if it turns up later it is counted as late and discarded. A run of missing frames
is given up as one ``Lost(n)``, never seq by seq: a gap may be huge (a seq of 10**18 is a
valid one) and counting it out would never end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Lost:
    """``n`` frames in a row given up, from the seq it is released with."""

    n: int = 1


LOST = Lost(1)


@dataclass
class StreamOrder:
    max_wait: float
    next_seq: int | None = None  # None until the stream's start is known
    last_seq: int | None = None  # set by end-of-stream
    pending: dict = field(default_factory=dict)  # seq -> (outcome, arrival time)
    stalled_since: float | None = None  # when we started waiting for next_seq
    t_first: float | None = None  # arrival of the first outcome, before the start is known
    late: int = 0
    ended_at: float | None = None

    def start(self, first_seq: int) -> None:
        if self.next_seq is None:
            self.next_seq = first_seq
            # Anything before the declared start cannot be released in order.
            for seq in [s for s in self.pending if s < first_seq]:
                del self.pending[seq]
                self.late += 1

    def add(self, seq: int, outcome: Any, now: float) -> None:
        if (self.next_seq is not None and seq < self.next_seq) or seq in self.pending:
            self.late += 1  # already given up (or a duplicate): never released twice
            return
        if self.t_first is None:
            self.t_first = now
        self.pending[seq] = (outcome, now)

    def end(self, last_seq: int, now: float) -> None:
        self.last_seq = last_seq
        self.ended_at = now

    def release(self, now: float) -> list[tuple[int, Any]]:
        """Outcomes that can go out now, in order; missing frames past the wait come out as LOST."""
        if self.next_seq is None:
            # Start never announced (metrics restarted mid-stream): begin at the lowest seen
            # once the wait is over, so early out-of-order arrivals are not cut off.
            ref = self.t_first if self.pending else self.ended_at
            if ref is None or now - ref < self.max_wait:
                return []
            if self.pending:
                self.next_seq = min(self.pending)
            else:
                assert self.last_seq is not None  # ended_at is set with it, by end()
                self.next_seq = self.last_seq + 1
        out = []
        while True:
            if self.next_seq in self.pending:
                out.append((self.next_seq, self.pending.pop(self.next_seq)[0]))
                self.next_seq += 1
                self.stalled_since = None
                continue
            expected = self.pending or (self.last_seq is not None and self.next_seq <= self.last_seq)
            if not expected:
                self.stalled_since = None
                break
            if self.stalled_since is None:
                self.stalled_since = now
            if now - self.stalled_since < self.max_wait:
                break
            # Everything up to the next outcome held (or past the end) is missing: one run.
            if self.pending:
                gap_end = min(self.pending)
            else:
                assert self.last_seq is not None  # nothing held, yet expected: the end is known
                gap_end = self.last_seq + 1
            out.append((self.next_seq, Lost(gap_end - self.next_seq)))
            self.next_seq = gap_end
        return out

    def finished(self) -> bool:
        """True once every frame up to the end of the stream has been released."""
        return (
            self.last_seq is not None
            and self.next_seq is not None
            and self.next_seq > self.last_seq
            and not self.pending
        )
