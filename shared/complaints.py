"""Warnings about bad input, bounded: the first of each kind logged, then counted.

A broken camera or a peer gone wrong can produce thousands of bad parts or messages a
second; a line for each would bury everything else in the log (and fill the disk). So each
kind of complaint is logged in full the first time, then only counted, with one reminder
line of the count at most every ``remind_s`` seconds while it goes on. The counts also go
out with the service's counters (Stats, summaries), so nothing is hidden.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

REMIND_S = 60.0


class Complaints:
    """``complain(kind, fmt, *args)``: log the first of ``kind``, count the rest; the count so far."""

    def __init__(
        self,
        log: logging.Logger,
        counted_in: str,
        *,
        remind_s: float = REMIND_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.counted_in = counted_in
        self.remind_s = remind_s
        self.clock = clock
        self.counts: dict[str, int] = {}
        self._said: dict[str, tuple[float, int]] = {}  # kind -> (when last logged, count then)

    def __call__(self, kind: str, fmt: str, *args: Any) -> int:
        n = self.counts[kind] = self.counts.get(kind, 0) + 1
        now = self.clock()
        if n == 1:
            self._said[kind] = (now, 1)
            self.log.warning(fmt + " (more of these are counted as %r in %s, not logged)", *args, kind, self.counted_in)
        else:
            when, then = self._said[kind]
            if now - when >= self.remind_s:
                self._said[kind] = (now, n)
                self.log.warning(
                    "%d more %r in the last %.0f s (%d in all); the latest: " + fmt,
                    n - then,
                    kind,
                    now - when,
                    n,
                    *args,
                )
        return n
