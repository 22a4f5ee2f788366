"""Recent scene changes and alerts (a frozen feed, a blackout), with the thumbnails their records carry.

The core flags a frame as a scene change (``MetricsRecord.scene_change``) seconds after it
was captured; the record carries the small JPEG the worker made of that frame from the
picture it decoded anyway (``MetricsRecord.thumbnail``, empty when the worker makes none).
So the viewer keeps no frames waiting for their records: a scene change whose record has no
thumbnail, or one that does not decode, is listed without a picture, counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from encoders.shared.messages import MetricsRecord

SCENES_KEPT = 24


@dataclass(frozen=True)
class SceneChange:
    stream: str
    seq: int
    t_capture: float
    drift: float | None
    thumbnail: bytes | None  # JPEG; None when the record carried none (or one that does not decode)
    kinds: tuple[str, ...] = ("scene_change",)  # what the frame set off: a scene change, alerts


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` decodes as a JPEG: the page serves it as one, to any browser, so a worker's
    thumbnail is looked at first (a scene change is rare, a small JPEG decodes in well under a ms)."""
    if not data.startswith(b"\xff\xd8"):
        return False
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None


class SceneChanges:
    """The last ``keep`` flagged frames of every stream together, newest first."""

    def __init__(self, keep: int = SCENES_KEPT) -> None:
        self._scenes: deque[SceneChange] = deque(maxlen=keep)
        self.counters = {"scene_changes": 0, "alerts": 0, "scene_thumbnails_missing": 0}

    def on_record(self, rec: MetricsRecord) -> SceneChange | None:
        """The new entry, if this record is a scene change or set off an alert."""
        kinds = (("scene_change",) if rec.scene_change else ()) + tuple(rec.events)
        if not kinds:
            return None
        thumbnail = rec.thumbnail if rec.thumbnail and is_jpeg(rec.thumbnail) else None
        if thumbnail is None:
            self.counters["scene_thumbnails_missing"] += 1
        self.counters["scene_changes"] += int(rec.scene_change)
        self.counters["alerts"] += len(rec.events)
        scene = SceneChange(rec.stream, rec.seq, rec.t_capture, rec.drift, thumbnail, kinds)
        self._scenes.appendleft(scene)
        return scene

    def on_down(self, stream: str, last_seq: int, now: float, silent_s: float) -> SceneChange:
        """A stream that has sent no record for a while: listed as stream_down, without a picture."""
        self.counters["alerts"] += 1
        down = SceneChange(stream, last_seq, now, None, None, ("stream_down",))
        self._scenes.appendleft(down)
        return down

    def recent(self) -> tuple[SceneChange, ...]:
        return tuple(self._scenes)
