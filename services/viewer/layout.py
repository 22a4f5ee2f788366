"""Putting the pieces in one image: video tiles in a grid, the plot beside them.

One image in one window (rather than a window per stream and one for the plot) keeps the
layout fixed, which is what a person watching several cameras wants, and what tests can check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

WAITING_SIZE = (640, 480)  # width, height of the placeholder shown before any frame
PLOT_MIN_W, PLOT_MAX_W = 320, 800


def fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to fit width x height, aspect kept, centred on black (as is when it fits exactly)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.zeros((height, width, 3), np.uint8)
    x, y = (width - nw) // 2, (height - nh) // 2
    out[y : y + nh, x : x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def grid(tiles: Sequence[np.ndarray]) -> np.ndarray:
    """Tiles of one size in a near-square grid, row by row."""
    h, w = tiles[0].shape[:2]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return out


def plot_size(video_height: int) -> tuple[int, int]:
    """Width and height of the plot beside a video column of this height."""
    return min(max(video_height, PLOT_MIN_W), PLOT_MAX_W), video_height


def side_by_side(video: np.ndarray, plot: np.ndarray | None) -> np.ndarray:
    if plot is None:
        return video
    return np.hstack([video, fit(plot, plot.shape[1], video.shape[0])])


def placeholder(lines: Sequence[str], size: tuple[int, int] = WAITING_SIZE) -> np.ndarray:
    """What the window shows until the first frame arrives: whom the viewer waits for (the
    publishers it listens to, or the core it asks for them; subscriptions.py writes the lines)."""
    width, height = size
    out = np.zeros((height, width, 3), np.uint8)
    y = 40
    for line in lines:
        cv2.putText(out, line, (20, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (200, 200, 200), 1, cv2.LINE_AA)
        y += 28
    return out
