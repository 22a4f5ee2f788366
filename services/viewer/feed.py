"""The main loop's side of the web viewer: what it puts on the board for the web server.

Keys on the board (each holds only its newest value):

- ``raw_key(stream)``: the stream's newest JPEG exactly as ingest published it;
- ``VIDEO``: the overlay video (every stream in a grid, as the window shows it), JPEG;
- ``STATE``: a snapshot (see snapshot.py), a few times a second;
- ``SCENES``: the recent scene changes with their thumbnails (carried by their records).

The overlay video costs a decode and an encode per frame, so it is made only while a web
client watches it and only when something it shows has changed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import cv2
import numpy as np

from encoders.shared.messages import EndOfStream, Frame, Message, MetricsRecord
from encoders.shared.silence import SilentStreams

from .latest import Latest
from .scenes import SceneChanges
from .snapshot import snapshot
from .state import ViewerState

VIDEO = "video"
STATE = "state"
SCENES = "scenes"
STATE_EVERY_S = 0.25
VIDEO_QUALITY = 80


def raw_key(stream: str) -> tuple[str, str]:
    return ("raw", stream)


class WebFeed:
    def __init__(self, board: Latest, scenes: SceneChanges | None = None, *, down_after: float = 0.0) -> None:
        self.board = board
        self.scenes = scenes or SceneChanges()
        self.silent = SilentStreams(down_after)  # listed down, once until it is back
        self._changed = True  # something the overlay video shows has changed since it was last made
        self._next_state = 0.0

    def on_message(self, msg: Message, now: float) -> None:
        """Every message the main loop drains, as it drains it, at ``now`` (time.monotonic())."""
        if isinstance(msg, Frame):
            self.board.put(raw_key(msg.stream), msg.jpeg)
        elif isinstance(msg, MetricsRecord):
            self.silent.heard(msg.stream, msg.seq, now)
            if self.scenes.on_record(msg) is not None:
                self.board.put(SCENES, self.scenes.recent())
        elif isinstance(msg, EndOfStream):
            self.silent.ended(msg.stream)
        self._changed = True

    def _check_down(self, now: float) -> None:
        for stream, seq, silent_s in self.silent.newly_down(now):
            self.scenes.on_down(stream, seq, time.time(), silent_s)
            self.board.put(SCENES, self.scenes.recent())

    def wants_video(self) -> bool:
        """Whether the overlay video should be rendered now: someone watches, and it would differ."""
        return self.board.readers(VIDEO) > 0 and (self._changed or self.board.get(VIDEO)[0] == 0)

    def put_video(self, image_bgr: np.ndarray) -> None:
        ok, jpeg = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, VIDEO_QUALITY])
        if ok:
            self.board.put(VIDEO, jpeg.tobytes())
        self._changed = False

    def put_state(
        self,
        state: ViewerState,
        now: float,
        counters: Mapping[str, int],
        *,
        waiting: str | None = None,
        force: bool = False,
    ) -> bool:
        """A new snapshot, at most every STATE_EVERY_S seconds (or now, with ``force``); ``waiting``:
        whom the viewer waits for before it can subscribe, for the page to say."""
        if not force and now < self._next_state:
            return False
        self._check_down(now)
        self._next_state = now + STATE_EVERY_S
        self.board.put(STATE, snapshot(state, now, {**counters, **self.scenes.counters}, waiting))
        return True
