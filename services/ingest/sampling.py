"""Which of a video stream's frames go on to the pipeline (ENCODERS_SAMPLE_FPS, --keyframes-only).

A 25-30 fps camera embedded at 5 fps: the ingest decides, per frame, before anything costly.

- Keyframes only: a packet that is not a keyframe is never decoded (the decoder is also told,
  ``skip_frame = "NONKEY"``), which skips nearly all the decoding.
- ``sample_fps``: a frame goes on when its capture time reaches the next due time, one interval
  after the last due (not after the last frame taken, so the rate holds on average: 30 -> 5 takes
  every 6th). Frames in between must still be decoded (each P frame is built on the one before),
  but not converted nor compressed: that is most of their cost (benchmarks/RESULTS.md).

Every frame left out is counted (``left_out``): the ingest reports them as dropped, so that
published = embedded + dropped + skipped + lost holds for the camera's every frame.
"""

from __future__ import annotations

EPSILON = 1e-3  # seconds: a timestamp this close to the due time is on time (30 fps -> 5: every 6th)


class Sampler:
    def __init__(self, fps: float = 0.0, *, keyframes_only: bool = False) -> None:
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self.keyframes_only = keyframes_only
        self.left_out = 0
        self._due: float | None = None

    def restart(self) -> None:
        """A new connection: the next frame is due at once."""
        self._due = None

    def want_packet(self, is_keyframe: bool) -> bool:
        """Before decoding: False (counted) for a packet that would never be used."""
        if self.keyframes_only and not is_keyframe:
            self.left_out += 1
            return False
        return True

    def want_picture(self, t_capture: float) -> bool:
        """After decoding: False (counted) for a picture between two due times."""
        if not self.interval:
            return True
        due = self._due
        if due is None or due - t_capture > 2 * self.interval:  # the first, or the time went back
            due = t_capture
        if t_capture + EPSILON < due:
            self.left_out += 1
            self._due = due
            return False
        due += self.interval
        self._due = due if due > t_capture else t_capture + self.interval  # fallen behind: from now on
        return True
