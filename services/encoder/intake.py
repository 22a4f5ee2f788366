"""The frames a worker holds in this life of its session, and whether it has room for another.

The core hands a worker a frame only while the worker holds fewer than the capacity its
Hello offered (one batch being encoded and one being gathered), and counts a frame held
until its result comes back: the worker asks for nothing, sending a result is what makes
room (docs/PROTOCOL.md, "Workers").

A Hello starts a new life of the session, and the core gives up whatever the worker held
before (lost). So every frame is tagged with the life it came in: when the session is lost
the intake is emptied, and a result of an earlier life is never sent (the core no longer
expects it from this worker). Life 0 is none: the session is not joined.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from encoders.shared.messages import Frame


@dataclass
class Held:
    frame: Frame
    life: int  # the life of the session the frame came in
    thumbnail: bytes | ValueError | None = None  # made from the decoded frame (thumbnails.py), or why not
    levels: tuple[float, float] | None = None  # (brightness, contrast) of the decoded picture


class Intake:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.life = 0
        self.waiting: deque[Held] = deque()
        self.held = 0  # frames of this life not finished: waiting, being decoded or encoded

    def begin(self, life: int) -> None:
        """A new life (a Welcome): nothing held, the full capacity free."""
        self.waiting.clear()
        self.held = 0
        self.life = life

    def give_up(self) -> int:
        """The session is lost: everything held is given up (the core counts it lost). Returns how many."""
        held = self.held
        self.begin(0)
        return held

    def add(self, frame: Frame) -> bool:
        """Hold a frame; False when full (the core handed more than the capacity: it gets no room)."""
        if self.held >= self.capacity:
            return False
        self.waiting.append(Held(frame, self.life))
        self.held += 1
        return True

    def take(self, max_n: int) -> list[Held]:
        """The next batch, in arrival order: still held until finished."""
        return [self.waiting.popleft() for _ in range(min(max_n, len(self.waiting)))]

    def current(self, item: Held) -> bool:
        """Whether a frame belongs to this life (its result is to be sent)."""
        return self.life != 0 and item.life == self.life

    def finish(self, items: list[Held]) -> list[Held]:
        """Frames done (embedded or skipped): the room they held is free. Returns those of this life."""
        mine = [item for item in items if self.current(item)]
        self.held -= len(mine)
        return mine

    def __len__(self) -> int:
        return len(self.waiting)
