"""Capture times of a video stream: its own timestamps, anchored to this machine's clock.

A video stream says when each frame was taken relative to the others (pts), not when on the
wall clock. Arrival times carry the network's jitter and the decoder's bursts (a keyframe,
a backlog after a stall), so each frame's time is the stream's own, anchored at the connection:

    t_capture = anchor + (pts - first pts) x time base

The anchor is the earliest the first frame can have been taken: the smallest of (arrival -
stream offset) over the frames so far. It only moves back, so no frame is ever dated after it
arrived, and a first frame that arrived late is corrected by the next. A burst at connection
(a server sending what it buffered, FFmpeg reading ahead to learn the stream) is dated as it
arrives; from the first frame that arrives on time on, frames are the stream's own time apart.

Drift is checked at every frame: a camera's clock runs at its own rate, so its times fall
behind ours; once a frame's time is more than ``max_drift`` behind its arrival, or the pts jumps
(back, or further ahead than ``max_jump``: a camera restarted its clock), the clock is anchored
again at that frame (counted, ``resets``). Frames without a timestamp (raw H.264 has none) take
their arrival time.

A video file played at its own rate (``paced``) is the other way round: the stream's times are
the schedule. The anchor is the start of play, and ``wait`` sleeps until each frame is due.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction

MAX_JUMP = 10.0  # seconds a timestamp may step forward between frames before it counts as a break


class CaptureClock:
    def __init__(self, *, max_drift: float, max_jump: float = MAX_JUMP, clock: Callable[[], float] = time.time) -> None:
        self.max_drift = max_drift
        self.max_jump = max_jump
        self.clock = clock
        self.resets = 0  # anchored again after drift or a break (not counting the first anchor)
        self._anchor: float | None = None  # wall time of the first pts
        self._base: Fraction | None = None  # the first pts, in seconds
        self._last: Fraction | None = None

    def restart(self) -> None:
        """A new connection: its timestamps start afresh (a new anchor, not counted as a reset)."""
        self._anchor = self._base = self._last = None

    def capture_time(self, pts: int | None, time_base: Fraction | None, arrival: float) -> float:
        """The capture time of a frame with this timestamp that arrived at ``arrival`` (time.time())."""
        if pts is None or not time_base:
            return arrival
        t = pts * time_base
        if self._anchor is None or self._base is None or self._last is None:
            self._anchor, self._base, self._last = arrival, t, t
            return arrival
        if t < self._last or t - self._last > self.max_jump:
            return self._reset(t, arrival)
        self._last = t
        offset = float(t - self._base)
        self._anchor = min(self._anchor, arrival - offset)  # the earliest it can have been
        when = self._anchor + offset
        if arrival - when > self.max_drift:
            return self._reset(t, arrival)
        return when

    def _reset(self, t: Fraction, arrival: float) -> float:
        self.resets += 1
        self._anchor, self._base, self._last = arrival, t, t
        return arrival


class Pacer:
    """A file played at its own rate: each frame is released when its timestamp is due."""

    def __init__(self, sleep: Callable[[float], bool], clock: Callable[[], float] = time.time) -> None:
        self.sleep = sleep  # waits up to a time; True if stopped meanwhile (threading.Event.wait)
        self.clock = clock
        self._start: float | None = None  # wall time at which this play's first frame is due
        self._base: float | None = None  # this play's first timestamp, seconds
        self._last = 0.0  # the last frame's time since the first, seconds

    def due(self, pts: int | None, time_base: Fraction | None) -> float:
        """The wall time this frame is due (and its capture time)."""
        if self._start is None:
            self._start = self.clock()
        if pts is not None and time_base:
            t = float(pts * time_base)
            if self._base is None:
                self._base = t
            if t - self._base < self._last:  # a timestamp back: play on from here rather than wait
                self._base = t - self._last
            self._last = t - self._base
        return self._start + self._last

    def wait(self, due: float) -> bool:
        """Sleep until ``due``; True if stopped meanwhile."""
        delay = due - self.clock()
        return delay > 0 and self.sleep(delay)

    def next_play(self, frame_time: float) -> None:
        """The file starts again: its times go on one frame's time after its last frame."""
        if self._start is not None:
            self._start += self._last + frame_time
        self._base, self._last = None, 0.0
