"""The text panel and drift bar drawn over each stream's video, as in the original tool.

Pure functions of (image, values) -> image. Where each value is drawn is fixed and public
(``field_box``, ``bar_box``, ``bar_fill_width``) so tests can find the pixels of one value.

    +--------------------------------+
    | cam0                           |  stream
    | FPS: 15.0 (embed 14.8)         |  fps: video shown / embedded per second
    | Similarity: 0.987              |  cosine with the previous embedded frame
    | Drift: 0.013                   |  1 - similarity
    | Embedded: 120  Dropped: 3      |  counts
    | [#####                       ] |  drift bar, 0..DRIFT_FULL_SCALE
    +--------------------------------+
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from encoders.shared.messages import MetricsRecord

FIELDS = ("stream", "fps", "similarity", "drift", "counts")
# OpenCV 4's Hershey fonts have ASCII glyphs only, so "unknown" is a plain hyphen, not a dash.
UNKNOWN = "-"

FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.55
THICKNESS = 1
TEXT_COLOUR = (255, 255, 255)  # BGR
ORIGIN = (8, 8)  # top-left corner of the panel in the image
PAD = 6
LINE_H = 22
PANEL_W = 300
BAR_H = 14
# The panel darkens the video behind it to this fraction, so white text reads on any scene.
PANEL_SHADE = 0.35
BAR_EMPTY = (60, 60, 60)
# Drift at which the bar is full. Consecutive frames of one scene drift by ~0.01-0.05 and a
# cut by ~0.2-0.4 (CLIP ViT-B/32), so 0.5 keeps a cut clearly visible without clipping often.
DRIFT_FULL_SCALE = 0.5

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), in image pixels


def field_box(name: str) -> Box:
    """The rectangle holding one line of text (label and value)."""
    i = FIELDS.index(name)
    x0, y0 = ORIGIN[0] + PAD, ORIGIN[1] + PAD + i * LINE_H
    return x0, y0, ORIGIN[0] + PANEL_W - PAD, y0 + LINE_H


def bar_box() -> Box:
    """The rectangle of the whole drift bar (empty part included)."""
    x0, y0 = ORIGIN[0] + PAD, ORIGIN[1] + PAD + len(FIELDS) * LINE_H + 4
    return x0, y0, ORIGIN[0] + PANEL_W - PAD, y0 + BAR_H


def panel_box() -> Box:
    return ORIGIN[0], ORIGIN[1], ORIGIN[0] + PANEL_W, bar_box()[3] + PAD


def bar_fill_width(drift: float | None) -> int:
    """Pixels of the bar filled for this drift: proportional, clipped to the bar."""
    if drift is None or not np.isfinite(drift):
        return 0
    x0, _, x1, _ = bar_box()
    frac = min(max(drift / DRIFT_FULL_SCALE, 0.0), 1.0)
    return round(frac * (x1 - x0))


def bar_colour(drift: float | None) -> tuple[int, int, int]:
    """Green for a still scene, through yellow, to red at full scale (BGR)."""
    frac = 0.0 if drift is None else min(max(drift / DRIFT_FULL_SCALE, 0.0), 1.0)
    return 0, round(255 * min(1.0, 2 * (1 - frac))), round(255 * min(1.0, 2 * frac))


def _num(value: float | None, fmt: str) -> str:
    return UNKNOWN if value is None else format(value, fmt)


def overlay_texts(
    stream: str,
    metrics: MetricsRecord | None,
    fps: float,
    *,
    ended: bool = False,
    fallback_counts: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """The text of each field. ``fallback_counts`` (ingest's own counters) stand in for the
    counts until the first metrics record arrives, so 'Dropped' shows even with no encoder."""
    fps_text = f"FPS: {fps:.1f}"
    if metrics is not None:
        fps_text += f" (embed {metrics.fps:.1f})"
    counts = metrics.counts if metrics is not None else (fallback_counts or {})
    similarity = metrics.similarity if metrics is not None else None
    drift = metrics.drift if metrics is not None else None
    return {
        "stream": stream + (" (ended)" if ended else ""),
        "fps": fps_text,
        "similarity": "Similarity: " + _num(similarity, ".3f"),
        "drift": "Drift: " + _num(drift, ".3f"),
        "counts": f"Embedded: {counts.get('embedded', UNKNOWN)}  Dropped: {counts.get('dropped', UNKNOWN)}",
    }


def fit_text(text: str, width: int) -> str:
    """``text`` cut to fit ``width`` pixels (a stream id may be 64 characters long)."""
    while text and cv2.getTextSize(text, FONT, FONT_SCALE, THICKNESS)[0][0] > width:
        text = text[:-1]
    return text


def draw_text(image: np.ndarray, name: str, text: str) -> None:
    """Write one field's text in its box (in place)."""
    x0, _y0, x1, y1 = field_box(name)
    text = fit_text(text, x1 - x0)
    cv2.putText(image, text, (x0, y1 - 6), FONT, FONT_SCALE, TEXT_COLOUR, THICKNESS, cv2.LINE_AA)


def draw_overlay(
    image_bgr: np.ndarray,
    stream: str,
    metrics: MetricsRecord | None,
    fps: float,
    *,
    ended: bool = False,
    fallback_counts: Mapping[str, object] | None = None,
) -> np.ndarray:
    """A copy of ``image_bgr`` with the panel, the values and the drift bar drawn on it."""
    out = image_bgr.copy()
    px0, py0, px1, py1 = panel_box()
    panel = out[py0:py1, px0:px1]  # a view, clipped by numpy when the image is small
    panel[:] = (panel * PANEL_SHADE).astype(np.uint8)
    for name, text in overlay_texts(stream, metrics, fps, ended=ended, fallback_counts=fallback_counts).items():
        draw_text(out, name, text)
    drift = metrics.drift if metrics is not None else None
    bx0, by0, bx1, by1 = bar_box()
    cv2.rectangle(out, (bx0, by0), (bx1 - 1, by1 - 1), BAR_EMPTY, cv2.FILLED)
    fill = bar_fill_width(drift)
    if fill:
        cv2.rectangle(out, (bx0, by0), (bx0 + fill - 1, by1 - 1), bar_colour(drift), cv2.FILLED)
    return out
