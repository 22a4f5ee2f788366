"""Cutting one stream's frames into segments of near-identical frames, each led by a keyframe.

A segment starts with a keyframe; the frames after it belong to it while they stay within
``max_drift`` (cosine distance) of the keyframe and within ``max_s`` seconds of capture
time of it. A scene change always starts a segment. Only keyframes are put in the HNSW
index; a search ranks the frames of the segments whose keyframes it finds (see schema.py).

Both bounds serve the search: ``max_drift`` bounds how far a frame can be from the
keyframe that stands for it in the index, ``max_s`` bounds how many frames a segment
holds (the work of ranking it) and how far before a time range a segment can begin.
"""

from __future__ import annotations

import math

import numpy as np


class Segmenter:
    def __init__(self, max_drift: float, max_s: float):
        self.max_drift = float(max_drift)
        self.max_s = float(max_s)
        self._key: np.ndarray | None = None  # the current keyframe's unit vector
        self._key_seq = -1
        self._key_t = 0.0

    def assign(
        self,
        seq: int,
        t_capture: float,
        vector: np.ndarray,
        *,
        scene_change: bool = False,
        norm_sq: float | None = None,
    ) -> tuple[bool, int]:
        """(is this frame a keyframe, the seq of its segment's keyframe). Frames come in seq order.
        ``norm_sq``: the vector's squared length, when the caller has worked it out already."""
        v = np.asarray(vector, dtype=np.float32)
        # Dot products (not np.linalg.norm and a division): this runs for every frame.
        norm = math.sqrt(float(np.dot(v, v)) if norm_sq is None else norm_sq)
        if (
            self._key is not None
            and not scene_change
            and t_capture - self._key_t < self.max_s
            and norm > 0
            and 1.0 - float(np.dot(v, self._key)) / norm <= self.max_drift
        ):
            return False, self._key_seq
        self._key = v / norm if norm > 0 else v
        self._key_seq, self._key_t = int(seq), float(t_capture)
        return True, int(seq)

    def resume(self, seq: int, t_capture: float, vector: np.ndarray) -> None:
        """The stream's last keyframe so far, as stored (a resumed run goes on with its segment)."""
        v = np.asarray(vector, dtype=np.float32)
        norm = math.sqrt(float(np.dot(v, v)))
        self._key = v / norm if norm > 0 else v
        self._key_seq, self._key_t = int(seq), float(t_capture)
