"""Putting one stream's frame outcomes back in sequence order (docs/PROTOCOL.md, "Order, loss and drift").

The core numbers every frame, so it knows which numbers exist: each ends in exactly one
outcome (embedded, dropped, skipped, lost), and outcomes come back out of order (workers
finish when they finish). ``StreamOrder`` releases them in sequence.

A missing outcome is given up (released as ``Lost``) once the OLDEST outcome waiting behind
it has waited ``max_wait``: every such gap at once. (The wait used to restart at each gap, so
a vanished worker that held every other frame stalled the stream one ``max_wait`` per gap.)
The core also hands in ``LOST`` itself, without waiting, for frames held by a worker it knows
to be gone. Past ``max_pending`` outcomes waiting, the oldest gaps are given up, counted in
``forced``. A run of missing frames comes out as one ``Lost(n)``, never seq by seq.

Numbers the core never handed out (its floor was raised by the recorder's ``Ready`` while a
stream ran) are filled with ``Unused(n)``, released silently: not frames, no outcome.

Only an outcome waiting *behind* a gap makes it overdue: a gap at the tail (frames still in a
worker's hands, or waiting for one) is the core's to close, by an outcome or ``LOST``.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Lost:
    """``n`` frames in a row given up, from the seq it is released with."""

    n: int = 1


LOST = Lost(1)


@dataclass(frozen=True)
class Unused:
    """``n`` numbers in a row that no frame was given (released silently)."""

    n: int


class StreamOrder:
    """One stream's outcomes, released in sequence order from ``first_seq``."""

    def __init__(self, first_seq: int, max_wait: float, max_pending: int = 10_000) -> None:
        self.next_seq = first_seq
        self.max_wait, self.max_pending = max_wait, max_pending
        self.pending: dict[int, Any] = {}  # seq -> outcome
        # Outcomes in arrival order, (arrival, seq): the oldest one still pending is the front,
        # once those already released are popped (lazily). Arrivals never go back in time.
        self._arrivals: deque[tuple[float, int]] = deque()
        self._seqs: list[int] = []  # a heap of pending seqs (lazily cleaned): the next gap's end
        self.late = 0  # outcomes for seqs already released (given up, or a duplicate)
        self.forced = 0  # frames given up because more than max_pending outcomes waited

    def add(self, seq: int, outcome: Any, now: float) -> bool:
        """File an outcome; False (and counted late) for a seq already released or already filed."""
        if seq < self.next_seq or seq in self.pending:
            self.late += 1
            return False
        self.pending[seq] = outcome
        heapq.heappush(self._seqs, seq)
        if not isinstance(outcome, Unused):  # a hole in the numbering is nothing to wait behind
            self._arrivals.append((now, seq))
        return True

    def release(self, now: float) -> list[tuple[int, Any]]:
        """Outcomes that can go out now, in order; overdue gaps come out as ``Lost(n)``."""
        out: list[tuple[int, Any]] = []
        while True:
            while self.next_seq in self.pending:
                outcome = self.pending.pop(self.next_seq)
                out.append((self.next_seq, outcome))
                self.next_seq += outcome.n if isinstance(outcome, Unused) else 1
            # What was released leaves the heap and the arrivals now, not lazily only when a gap is given
            # up: in order, every frame's entries stayed for ever (about 100 bytes a frame, for the core's life).
            while self._seqs and self._seqs[0] < self.next_seq:
                heapq.heappop(self._seqs)
            if not self.pending:
                self._arrivals.clear()
                return out
            if len(self.pending) > self.max_pending:
                self.forced += self._give_up_gap(out)
                continue
            oldest = self._oldest_arrival()
            if oldest is None or now - oldest < self.max_wait:
                return out
            self._give_up_gap(out)

    def waiting(self) -> int:
        """Outcomes held back by a gap."""
        return len(self.pending)

    # -- internals ------------------------------------------------------------------------------

    def _give_up_gap(self, out: list[tuple[int, Any]]) -> int:
        """Release the gap before the lowest pending outcome as one Lost run; its length. (The heap holds
        the pending seqs only: ``release`` takes out what it released before it gives up a gap.)"""
        n = self._seqs[0] - self.next_seq
        out.append((self.next_seq, Lost(n)))
        self.next_seq += n
        return n

    def _oldest_arrival(self) -> float | None:
        """When the oldest outcome still waiting arrived (every waiting one is behind the gap)."""
        while self._arrivals and self._arrivals[0][1] not in self.pending:
            self._arrivals.popleft()
        return self._arrivals[0][0] if self._arrivals else None
