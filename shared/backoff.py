"""Waits between attempts at something that fails: doubling up to a longest, each less a random part.

Used wherever something is tried again: the ingest reconnecting to its camera, the recorder's
database writer and its alerts to MQTT and webhooks, the all-in-one command restarting a child.
The random part (jitter) keeps those that failed together (the ingests of one camera server,
every service when the core's machine came back, the children of one launcher) from trying
again in step; no wait is longer than the longest.
"""

from __future__ import annotations

import random

JITTER = 0.25  # each wait is 75-100 % of the doubling's


class Backoff:
    """``first``, twice that, four times... up to ``longest``, each less up to ``jitter`` of it, at random.

    ``next()`` after each failure gives the wait before the next attempt; ``reset()`` after a
    success starts over. ``rng``: the random source (tests give a seeded one).
    """

    def __init__(
        self, first: float, longest: float, *, jitter: float = JITTER, rng: random.Random | None = None
    ) -> None:
        self.first, self.longest, self.jitter = first, longest, jitter
        self.rng = rng if rng is not None else random.Random()
        self.failures = 0  # in a row, since the start or the last reset
        self.last = 0.0  # the last wait given (0 before any, and after a reset)
        self._doubling = min(first, longest)

    @property
    def failing(self) -> bool:
        """Whether an attempt has failed since the start or the last reset."""
        return self.failures > 0

    def next(self) -> float:
        """One more failure: the seconds to wait before the next attempt."""
        self.failures += 1
        self.last = self._doubling * (1.0 - self.jitter * self.rng.random())
        self._doubling = min(self._doubling * 2, self.longest)
        return self.last

    def reset(self) -> None:
        """An attempt succeeded: the next wait is the first again."""
        self.failures, self.last = 0, 0.0
        self._doubling = min(self.first, self.longest)
