"""Streams that went silent: no record for a while, though they have not ended.

The recorder tells such a stream down (MQTT, webhooks, the events table) and the web page lists
it; both watch the records they receive the same way, with this. A stream is reported once per
silence: a record brings it back, and it may go down again later; an ended stream is not down.
"""

from __future__ import annotations


class SilentStreams:
    def __init__(self, down_after: float) -> None:
        self.down_after = down_after  # seconds without a record (0: never down): ENCODERS_STREAM_DOWN_AFTER
        self._heard: dict[str, tuple[float, int]] = {}  # stream -> (when its last record came, its seq)
        self._down: set[str] = set()

    def heard(self, stream: str, seq: int, now: float) -> None:
        """A record of ``stream`` came at ``now`` (a monotonic clock)."""
        self._heard[stream] = (now, seq)
        self._down.discard(stream)

    def ended(self, stream: str) -> None:
        self._heard.pop(stream, None)
        self._down.discard(stream)

    def newly_down(self, now: float) -> list[tuple[str, int, float]]:
        """The streams silent for down_after seconds at ``now`` and not yet reported: each one's
        name, the seq of its last record and how long it has been silent."""
        if self.down_after <= 0:
            return []
        down = []
        for stream, (heard, seq) in self._heard.items():
            if stream not in self._down and now - heard >= self.down_after:
                self._down.add(stream)
                down.append((stream, seq, now - heard))
        return down
