"""Clocks in the core: each camera's against the core's (``Clocks``), and the core's own time less
the time its loop did not run (``CoreClock``, below).

Every capture (a row of ``Captured``) carries the time its ingest read it, on the ingest machine's clock (wall
time). That time is what is stored, searched by and summed into summary.json's durations, so
an ingest whose clock is off (no NTP, a board without a real-time clock, a clock set by hand)
stores every frame at the wrong time, and one set right during a run makes time go backwards
in it. The core compares each capture's time with its own clock as the capture arrives
(``offset``: positive when the ingest is ahead):

- ahead by more than ``max_skew``: a capture cannot arrive before it was taken, so that is the
  clock, said at once;
- behind by more than ``max_skew``: a capture may also have been late (held up in a link, or
  read in a burst by a core that was paused), so it counts only once every capture of the
  stream has been that far behind for ``CONFIRM_S`` of the core's time. A lossless ingest's
  captures wait for credit, so only its clock being ahead is judged.

Said once per stream (in this life of the core), through the core's bounded warnings
(shared/complaints.py, kind ``clock_skew``: counted in Stats and Prometheus); each stream's
latest offset is in its Stats (``clock_offset_s``) and in Prometheus. ``max_skew`` 0: no check.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from encoders.shared.complaints import Complaints

CONFIRM_S = 5.0  # seconds (the core's) a stream's captures must all be late before its clock is blamed
REMEMBER = 1024  # streams remembered as warned about (the oldest forgotten past it: a warning again)


class Clocks:
    """Each capture's time against the core's clock as it arrives; a stream whose clock is off said once."""

    def __init__(self, complain: Complaints, max_skew: float, *, wall: Callable[[], float] = time.time) -> None:
        self.complain, self.max_skew, self.wall = complain, max_skew, wall
        self.offsets: dict[str, float] = {}  # stream -> its latest capture's offset, seconds (live ingests)
        self._behind_since: dict[str, float] = {}  # stream -> since when (core time) every capture was late
        self._warned: dict[str, None] = {}  # streams said already, oldest first

    def capture(self, stream: str, t_capture: float, now: float, *, lossless: bool = False) -> None:
        """A capture of ``stream`` taken at ``t_capture`` (the ingest's clock) arrives now."""
        if self.max_skew <= 0:
            return
        offset = t_capture - self.wall()
        self.offsets[stream] = offset
        if offset > self.max_skew:
            self._skewed(stream, offset)
        elif -offset > self.max_skew and not lossless:
            since = self._behind_since.setdefault(stream, now)
            if now - since >= CONFIRM_S:
                self._skewed(stream, offset)
        else:
            self._behind_since.pop(stream, None)

    def leave(self, stream: str) -> None:
        """The stream's ingest left: its offset is no longer measured."""
        self.offsets.pop(stream, None)
        self._behind_since.pop(stream, None)

    def _skewed(self, stream: str, offset: float) -> None:
        if stream in self._warned:
            return
        self._warned[stream] = None
        if len(self._warned) > REMEMBER:
            del self._warned[next(iter(self._warned))]
        self.complain(
            "clock_skew",
            "stream %s: its ingest's clock is %.1f s %s the core's (ENCODERS_MAX_CLOCK_SKEW is %g s)%s: its frames "
            "are stored at the times it says; set that machine's clock right (NTP)",
            stream,
            abs(offset),
            "ahead of" if offset > 0 else "behind",
            self.max_skew,
            "" if offset > 0 else ", or its captures take that long to reach the core",
        )


class CoreClock:
    """The core's own time: monotonic, less the time its loop did not run.

    A core that is paused (SIGSTOP, a suspended VM, a machine starved of CPU) reads nothing
    meanwhile: what its peers send waits, unread, in the kernel's buffers, and reaches ZeroMQ's
    queues only once its I/O thread runs again, which may be after the loop's first turn. On the
    monotonic clock that pause would be every peer's silence: every session expired before its
    messages are read (an ingest's captures then counted as never arrived), every frame in a
    worker's hands held too long, every missing outcome waited for long enough. So a turn of the
    loop that comes more than ``stall_s`` after the one before counts as ``stall_s`` of the core's
    time; the rest (``gap``, for the log) passed for nobody. ``stall_s`` is less than a heartbeat,
    so a peer heard just before the pause is not taken for silent just after it; a peer that
    really went away meanwhile is counted gone a heartbeat timeout later.
    """

    def __init__(self, stall_s: float, source: Callable[[], float] = time.monotonic) -> None:
        self.stall_s, self.source = stall_s, source
        self.skipped = 0.0  # seconds left out so far
        self.gap = 0.0  # left out at the latest reading (0: the loop ran on time)
        self._last: float | None = None

    def __call__(self) -> float:
        real = self.source()
        self.gap = 0.0
        if self._last is not None and real - self._last > self.stall_s:
            self.gap = real - self._last - self.stall_s
            self.skipped += self.gap
        self._last = real
        return real - self.skipped
