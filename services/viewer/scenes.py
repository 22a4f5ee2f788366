"""Recent scene changes, with thumbnails the viewer makes from the frames it received itself.

Metrics flags a frame as a scene change (``MetricsRecord.scene_change``) seconds after
ingest published it, so the viewer keeps the JPEGs of recent frames until their record
arrives. Records come in sequence order: once the record of frame N is here, frames
before N can no longer be asked for and are let go, which keeps the store near empty
while metrics keeps up; a byte limit bounds it when metrics does not.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import cv2
import numpy as np

from encoders.shared.messages import Frame, MetricsRecord

# Per stream. A 640x480 JPEG is ~40 kB, so this holds about a minute of 15 fps video: more
# than a CPU encoder's batch takes to come back as a record.
RECENT_BYTES = 32 << 20
SCENES_KEPT = 24
THUMB_WIDTH = 192
THUMB_QUALITY = 75


@dataclass(frozen=True)
class SceneChange:
    stream: str
    seq: int
    t_capture: float
    drift: float | None
    thumbnail: bytes | None  # JPEG; None when the frame was no longer held (or did not decode)


class RecentFrames:
    """One stream's recent JPEGs by sequence number, oldest first, at most ``max_bytes`` of them."""

    def __init__(self, max_bytes: int = RECENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, seq: int, jpeg: bytes) -> None:
        old = self._frames.pop(seq, None)  # a restarted ingest numbers from 0 again
        if old is not None:
            self.bytes -= len(old)
        self._frames[seq] = jpeg
        self.bytes += len(jpeg)
        while self.bytes > self.max_bytes and len(self._frames) > 1:
            self.bytes -= len(self._frames.popitem(last=False)[1])

    def take(self, seq: int) -> bytes | None:
        """Frame ``seq`` (if still held), letting go of it and of every older one."""
        while self._frames:
            oldest = next(iter(self._frames))
            if oldest > seq:
                break
            jpeg = self._frames.pop(oldest)
            self.bytes -= len(jpeg)
            if oldest == seq:
                return jpeg
        return None


def make_thumbnail(jpeg: bytes, width: int = THUMB_WIDTH) -> bytes | None:
    """A small JPEG of ``jpeg``, ``width`` pixels wide (aspect kept); None if it does not decode."""
    data = np.frombuffer(jpeg, np.uint8)
    # libjpeg decodes at 1/2, 1/4 or 1/8 scale for a fraction of the cost of a full decode.
    img = cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_2)
    if img is None:
        return None
    if img.shape[1] < width:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if img is None:
            return None
    h, w = img.shape[:2]
    if w != width:
        img = cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, out = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    return out.tobytes() if ok else None


class SceneChanges:
    """The last ``keep`` flagged frames of every stream together, newest first."""

    def __init__(self, keep: int = SCENES_KEPT, max_bytes: int = RECENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._recent: dict[str, RecentFrames] = {}
        self._scenes: deque[SceneChange] = deque(maxlen=keep)
        self.counters = {"scene_changes": 0, "scene_thumbnails_missing": 0}

    def on_frame(self, frame: Frame) -> None:
        recent = self._recent.get(frame.stream)
        if recent is None:
            recent = self._recent[frame.stream] = RecentFrames(self.max_bytes)
        recent.add(frame.seq, frame.jpeg)

    def on_record(self, rec: MetricsRecord) -> SceneChange | None:
        """Lets go of the frames this record makes unneeded; the new scene change if it is one."""
        recent = self._recent.get(rec.stream)
        jpeg = recent.take(rec.seq) if recent is not None else None
        if not rec.scene_change:
            return None
        thumbnail = make_thumbnail(jpeg) if jpeg is not None else None
        if thumbnail is None:
            self.counters["scene_thumbnails_missing"] += 1
        self.counters["scene_changes"] += 1
        scene = SceneChange(rec.stream, rec.seq, rec.t_capture, rec.drift, thumbnail)
        self._scenes.appendleft(scene)
        return scene

    def recent(self) -> tuple[SceneChange, ...]:
        return tuple(self._scenes)

    def held_bytes(self) -> int:
        return sum(r.bytes for r in self._recent.values())
