"""What the viewer knows about each stream: its newest frame, its newest metrics, its drift history.

Pure bookkeeping, no sockets and no window: the main loop feeds it every message it drains
and asks it, once per tick, which frames are new. Only the newest frame of a stream is
kept, so a viewer slower than the camera skips frames here and never slows anyone upstream.

A stream's new epoch (``StreamStart``: a restarted camera, a reconnected ingest) puts a gap
in its drift history, a point whose drift is NaN (``GAP``): drift is never computed across
an epoch's start, so the plot and the page draw no line across it either.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from encoders.shared.messages import EndOfStream, Frame, Message, MetricsRecord, Stats, StreamStart

GAP = math.nan  # the drift of a history point that only marks an epoch's start


class RateMeter:
    """Events per second over the last ``window`` seconds (the display FPS of one stream)."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()

    def rate(self, now: float) -> float:
        # A stream that stopped sending shows 0 once its last frame leaves the window.
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


@dataclass
class StreamState:
    stream: str
    history_len: int
    frame: Frame | None = None  # newest frame received, not yet shown
    metrics: MetricsRecord | None = None
    # (t_capture, drift) of every metrics record with a drift, oldest first; GAP between epochs.
    drift: deque = field(init=False)
    display_fps: RateMeter = field(default_factory=RateMeter)
    ended: bool = False
    frames_received: int = 0
    drift_added: int = 0  # points ever added to ``drift``: lets a web client ask only for the new ones
    epochs: int = 0  # StreamStarts heard

    def __post_init__(self) -> None:
        self.drift = deque(maxlen=self.history_len)

    def add_drift(self, t: float, drift: float) -> None:
        self.drift.append((t, drift))
        self.drift_added += 1

    def new_epoch(self) -> None:
        """The stream starts again: a gap after the last point (at its time, so the time axis
        stays that of the records), unless the history is empty or ends in one already."""
        self.epochs += 1
        self.ended = False
        if self.drift and not math.isnan(self.drift[-1][1]):
            self.add_drift(self.drift[-1][0], GAP)


class ViewerState:
    """Every stream the viewer has heard of, fed one decoded message at a time."""

    def __init__(self, history: int = 300) -> None:
        self.history = history
        self.streams: dict[str, StreamState] = {}
        self.stats: dict[tuple[str, str], Stats] = {}  # (service, stream) -> newest
        # frames_superseded: replaced by a newer frame before it was shown (the viewer's own drops).
        self.counters = {"frames_received": 0, "frames_superseded": 0, "metrics_received": 0}

    def stream(self, name: str) -> StreamState:
        st = self.streams.get(name)
        if st is None:
            st = self.streams[name] = StreamState(name, self.history)
        return st

    def add(self, msg: Message) -> None:
        if isinstance(msg, Frame):
            self._add_frame(msg)
        elif isinstance(msg, MetricsRecord):
            self.counters["metrics_received"] += 1
            st = self.stream(msg.stream)
            st.metrics = msg  # metrics publishes in sequence order: the last one is the newest
            if msg.drift is not None:
                st.add_drift(msg.t_capture, float(msg.drift))
        elif isinstance(msg, StreamStart):
            self.stream(msg.stream).new_epoch()
        elif isinstance(msg, EndOfStream):
            self.stream(msg.stream).ended = True
        elif isinstance(msg, Stats):
            self.stats[(msg.service, msg.stream)] = msg

    def _add_frame(self, frame: Frame) -> None:
        self.counters["frames_received"] += 1
        st = self.stream(frame.stream)
        st.frames_received += 1
        # End-of-stream comes through metrics, well after ingest published the stream's last
        # frame, so a frame that arrives after it is from a camera that came back.
        st.ended = False
        if st.frame is not None:
            self.counters["frames_superseded"] += 1
        st.frame = frame

    def take_new_frames(self, now: float) -> list[Frame]:
        """The newest unseen frame of each stream (to decode and show); counts them as shown."""
        out = []
        for st in self.streams.values():
            if st.frame is not None:
                out.append(st.frame)
                st.frame = None
                st.display_fps.tick(now)
        return out

    def drift_history(self) -> dict[str, list[tuple[float, float]]]:
        return {name: list(st.drift) for name, st in sorted(self.streams.items()) if st.drift}
