"""Which embedded frames get a JPEG snapshot, and the few recent JPEGs kept to write one."""

from __future__ import annotations

from collections import OrderedDict


class SnapshotPolicy:
    """One snapshot every ``interval`` seconds of capture time, as the seed did.

    The first embedded frame is due; after a snapshot at capture time t, the next is the
    first embedded frame captured at or after t + interval (interval 0: every frame). A
    due frame whose JPEG is not at hand is passed over, and the next one is still due.
    """

    def __init__(self, interval: float):
        self.interval = float(interval)
        self.last: float | None = None  # capture time of the last snapshot written

    def due(self, t_capture: float) -> bool:
        return self.last is None or t_capture >= self.last + self.interval

    def taken(self, t_capture: float) -> None:
        self.last = t_capture


def snapshot_name(seq: int) -> str:
    return f"frame_{seq:06d}.jpg"


def scene_snapshot_name(seq: int) -> str:
    """A scene change's snapshot between two periodic ones: named apart, so frame_*.jpg stay periodic."""
    return f"scene_{seq:06d}.jpg"


class FrameCache:
    """The JPEGs of recent frames of one stream, by seq, until their record arrives.

    Bounded by count: frames normally arrive a little before their record, so only the
    most recent ones can still be wanted. Every frame is kept: a record may ask for its
    frame's snapshot (periodic, or a scene change) and its thumbnail.
    """

    def __init__(self, max_frames: int = 128):
        self.max_frames = max_frames
        self._frames: OrderedDict[int, bytes] = OrderedDict()

    def put(self, seq: int, jpeg: bytes) -> None:
        self._frames[seq] = jpeg
        self._frames.move_to_end(seq)
        while len(self._frames) > self.max_frames:
            self._frames.popitem(last=False)

    def take(self, seq: int) -> bytes | None:
        """The JPEG of ``seq`` (or None), forgetting it and every older frame: records come in seq order."""
        jpeg = self._frames.pop(seq, None)
        # Frames arrive in seq order, so the older ones are at the front.
        while self._frames and next(iter(self._frames)) < seq:
            self._frames.popitem(last=False)
        return jpeg

    def __len__(self) -> int:
        return len(self._frames)
