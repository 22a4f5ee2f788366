"""Frames a worker holds, and the credit it owes back to each ingest.

A worker never receives a frame it did not ask for: it grants each ingest ``capacity``
credits (one batch being encoded plus one being gathered), and grants one more for every
frame it finishes. So no stale queue builds up anywhere, and ingest drops frames itself
when every worker is busy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from encoders.shared.messages import Frame


@dataclass
class Held:
    source: int  # index of the ingest socket the frame came from
    frame: Frame


@dataclass
class Intake:
    capacity: int
    sources: int
    waiting: deque = field(default_factory=deque)
    # Frames received per source and not yet finished: waiting, being decoded or encoded.
    held: list = field(init=False)

    def __post_init__(self) -> None:
        self.held = [0] * self.sources

    def add(self, source: int, frame: Frame) -> None:
        self.waiting.append(Held(source, frame))
        self.held[source] += 1

    def take(self, max_n: int) -> list[Held]:
        return [self.waiting.popleft() for _ in range(min(max_n, len(self.waiting)))]

    def finish(self, items: list[Held]) -> dict[int, int]:
        """Frames done (embedded or skipped): the credit to give back, per source."""
        credit: dict[int, int] = {}
        for item in items:
            self.held[item.source] -= 1
            credit[item.source] = credit.get(item.source, 0) + 1
        return credit

    def free(self, source: int) -> int:
        """Credit a restarted ingest should get: what this worker can take from it now."""
        return max(0, self.capacity - self.held[source])

    def __len__(self) -> int:
        return len(self.waiting)
