"""Similarity and drift between consecutive embedded frames of one stream."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors; embeddings arrive L2-normalised but we do not rely on it."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


@dataclass
class DriftTracker:
    """drift = 1 - similarity with the previous embedded frame, plus rolling statistics.

    Mean and std come from running sums rather than a pass over the window: this runs
    once per frame for every camera.
    """

    window: int
    previous: np.ndarray | None = None
    drifts: deque = field(init=False)
    times: deque = field(init=False)
    _sum: float = 0.0
    _sumsq: float = 0.0

    def __post_init__(self) -> None:
        self.drifts = deque(maxlen=self.window)
        self.times = deque(maxlen=self.window)

    def update(self, vector: np.ndarray, t_capture: float) -> tuple[float | None, float | None]:
        self.times.append(t_capture)
        prev, self.previous = self.previous, vector
        if prev is None:
            return None, None
        similarity = cosine_similarity(prev, vector)
        drift = 1.0 - similarity
        if len(self.drifts) == self.drifts.maxlen:
            old = self.drifts[0]
            self._sum -= old
            self._sumsq -= old * old
        self.drifts.append(drift)
        self._sum += drift
        self._sumsq += drift * drift
        return similarity, drift

    def rolling(self) -> dict:
        n = len(self.drifts)
        if n == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        mean = self._sum / n
        var = max(0.0, self._sumsq / n - mean * mean)
        return {"count": n, "mean": mean, "std": math.sqrt(var), "min": min(self.drifts), "max": max(self.drifts)}

    def fps(self) -> float:
        """Embedded frames per second of capture time, over the window."""
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])
