"""Similarity and drift between consecutive embedded frames of one stream."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from encoders.shared.messages import Rolling

log = logging.getLogger(__name__)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors; embeddings arrive L2-normalised but we do not rely on it.

    In float64: a float32 norm overflows (to a NaN similarity) for values near float32's
    limit, and underflows to 0 for the tiniest, both valid in a message."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    # Squared norms as dot products, the clip in Python: half the time of np.linalg.norm and np.clip
    # (once a frame per camera). A float32's square and a product of two such sums fit a float64.
    na, nb = float(a @ a), float(b @ b)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return min(1.0, max(-1.0, float(a @ b) / math.sqrt(na * nb)))


def consecutive_similarities(vectors: Sequence[np.ndarray]) -> list[float | None]:
    """The cosine of each vector with the one before it (None for the first, and where the two differ
    in length), as ``cosine_similarity`` gives it, for a run of a stream's frames in one go.

    Row-wise over the run stacked: two passes of numpy over n x dim where pair by pair is three dot
    products and their Python around them a frame (issue #21: per-frame logic, per batch). The
    sums may differ from the pair's ``@`` in the last bit (another order of adding)."""
    n = len(vectors)
    out: list[float | None] = [None] * n
    if n < 2:
        return out
    shape = vectors[0].shape
    if any(v.shape != shape for v in vectors):  # another model mid-run: pair by pair
        for i in range(1, n):
            if vectors[i].shape == vectors[i - 1].shape:
                out[i] = cosine_similarity(vectors[i - 1], vectors[i])
        return out
    rows = np.stack(vectors).astype(np.float64).reshape(n, -1)
    norms = np.einsum("ij,ij->i", rows, rows)
    dots = np.einsum("ij,ij->i", rows[1:], rows[:-1])
    both = norms[1:] * norms[:-1]
    cosines = np.divide(dots, np.sqrt(both), out=np.zeros_like(dots), where=both != 0.0)  # a zero vector: 0
    out[1:] = np.clip(cosines, -1.0, 1.0).tolist()
    return out


@dataclass
class DriftTracker:
    """drift = 1 - similarity with the previous embedded frame, plus rolling statistics.

    Nothing here passes over the window: this runs once per frame for every camera, and the
    rolling statistics are read twice per frame (before a frame's drift, for the scene rule,
    and after). Mean and std come from running sums; min and max from monotonic queues (the
    sliding-window minimum: each drift enters and leaves each queue once), where ``min()``
    and ``max()`` over 300 drifts twice a frame were in the core's profile (issue #21).
    """

    window: int
    previous: np.ndarray | None = None
    drifts: deque = field(init=False)
    times: deque = field(init=False)
    _sum: float = 0.0
    _sumsq: float = 0.0
    _n: int = 0  # drifts ever added: the position of the next one
    # (position, drift), positions rising: the candidates for the window's min (values rising)
    # and max (values falling). The front is the answer, once positions out of the window go.
    _lows: deque = field(init=False)
    _highs: deque = field(init=False)
    dim_changes: int = 0  # frames whose embedding was not as long as the one before
    # rolling() until the next update: a frame's statistics after its drift are the next frame's before
    # (both asked a frame: the scene rule's and the record's); read only, as records are.
    _rolling: Rolling | None = None

    def __post_init__(self) -> None:
        self.drifts = deque(maxlen=self.window)
        self.times = deque(maxlen=self.window)
        self._lows, self._highs = deque(), deque()

    def update(
        self, vector: np.ndarray, t_capture: float, known: tuple[np.ndarray, float | None] | None = None
    ) -> tuple[float | None, float | None]:
        """This frame's similarity and drift (None for a stream's first frame, or another length of
        embedding), and the window updated. ``known``: a vector and this one's similarity with it
        (``consecutive_similarities``), taken where that vector is the one before."""
        self._rolling = None
        self.times.append(t_capture)
        prev, self.previous = self.previous, vector
        if prev is not None and prev.shape != vector.shape:
            # Another length of embedding (another model) from here on: nothing to compare this
            # frame with, as for a stream's first frame.
            self.dim_changes += 1
            if self.dim_changes == 1:
                log.warning(
                    "embeddings of %d values after %d: another model? drift starts afresh (further changes are "
                    "counted, not logged)",
                    vector.size,
                    prev.size,
                )
            prev = None
        if prev is None:
            return None, None
        if known is not None and known[0] is prev and known[1] is not None:
            similarity = known[1]
        else:
            similarity = cosine_similarity(prev, vector)
        drift = 1.0 - similarity
        if len(self.drifts) == self.drifts.maxlen:
            old = self.drifts[0]
            self._sum -= old
            self._sumsq -= old * old
        self.drifts.append(drift)
        self._sum += drift
        self._sumsq += drift * drift
        self._extremes(drift)
        return similarity, drift

    def _extremes(self, drift: float) -> None:
        position, oldest = self._n, self._n - self.window + 1  # the window: positions oldest..position
        self._n += 1
        lows, highs = self._lows, self._highs
        while lows and lows[-1][1] >= drift:  # never the min again while this drift is in the window
            lows.pop()
        lows.append((position, drift))
        while highs and highs[-1][1] <= drift:
            highs.pop()
        highs.append((position, drift))
        while lows[0][0] < oldest:
            lows.popleft()
        while highs[0][0] < oldest:
            highs.popleft()

    def rolling(self) -> Rolling:
        if self._rolling is None:
            self._rolling = self._statistics()
        return self._rolling

    def _statistics(self) -> Rolling:
        n = len(self.drifts)
        if n == 0:
            return Rolling(count=0, mean=None, std=None, min=None, max=None)
        lo, hi = self._lows[0][1], self._highs[0][1]
        # Running sums drift by rounding (a value added, then taken away): the mean is kept
        # between the window's own extremes, where it is, and the spread within what drifts allow.
        mean = min(hi, max(lo, self._sum / n))
        var = max(0.0, self._sumsq / n - mean * mean)
        return Rolling(count=n, mean=mean, std=min(1.0, math.sqrt(var)), min=lo, max=hi)

    def fps(self) -> float:
        """Embedded frames per second of capture time, over the window."""
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return 0.0
        rate = (len(self.times) - 1) / (self.times[-1] - self.times[0])
        return rate if math.isfinite(rate) else 0.0  # capture times a hair apart: no rate to tell
