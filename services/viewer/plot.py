"""The drift plot beside the video: matplotlib drawn off-screen (Agg) into a BGR image.

The figure is drawn into an array rather than shown in a window of its own so that the
viewer has one window, one event loop (OpenCV's) and one image to compose. Drawing takes
tens of milliseconds, so the main loop redraws it a few times a second, never per frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# The y axis always shows at least this much drift, so that a still scene looks still.
MIN_Y_TOP = 0.5
DPI = 100

# stream -> [(t_capture, drift), ...] oldest first; a NaN drift (a stream's restart, state.py)
# breaks the stream's line there, as matplotlib draws no segment to or from a NaN.
History = Mapping[str, Sequence[tuple[float, float]]]


class DriftPlot:
    """One figure, kept between renders (building a figure costs more than drawing one)."""

    def __init__(self, width: int, height: int, interval: float = 0.25) -> None:
        self.size = (width, height)
        self.interval = interval
        # Figure + FigureCanvasAgg directly, not pyplot: no global backend, no GUI toolkit.
        self._fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
        self._canvas = FigureCanvasAgg(self._fig)
        self._ax = self._fig.add_subplot(1, 1, 1)
        # Fixed margins in pixels (tight_layout would re-measure every text on every render).
        self._fig.subplots_adjust(left=50 / width, right=1 - 12 / width, bottom=42 / height, top=1 - 28 / height)
        self._last_key: object = None
        self._last_time = float("-inf")
        self._image: np.ndarray | None = None

    def image(self, history: History, now: float) -> np.ndarray:
        """The plot, redrawn only if the data changed and ``interval`` seconds have passed."""
        key = tuple((name, len(pts), pts[-1] if pts else None) for name, pts in history.items())
        if self._image is None or (key != self._last_key and now - self._last_time >= self.interval):
            self._image = self.render(history)
            self._last_key, self._last_time = key, now
        return self._image

    def render(self, history: History) -> np.ndarray:
        ax = self._ax
        ax.clear()
        newest = max((pts[-1][0] for pts in history.values() if pts), default=0.0)
        top = MIN_Y_TOP
        for name, pts in history.items():
            if not pts:
                continue
            arr = np.asarray(pts, dtype=np.float64)
            ax.plot(arr[:, 0] - newest, arr[:, 1], linewidth=1.2, label=name)
            top = max(top, float(np.nanmax(arr[:, 1])) * 1.05)
        ax.set_ylim(0.0, top)
        ax.set_title("Drift (1 - similarity)", fontsize=10)
        ax.set_xlabel("seconds before newest frame", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if any(history.values()):
            ax.legend(loc="upper left", fontsize=8)
        else:
            ax.text(0.5, 0.5, "waiting for metrics", ha="center", va="center", transform=ax.transAxes)
        self._canvas.draw()
        rgba = np.asarray(self._canvas.buffer_rgba())
        # RGBA -> BGR, OpenCV's order; a copy, since the canvas reuses its buffer.
        return np.ascontiguousarray(rgba[:, :, 2::-1])
