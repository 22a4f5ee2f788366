"""The viewer's drawing: overlay text and bar, drift plot, layout. Pure functions, no window."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from encoders.services.viewer import layout, overlay
from encoders.services.viewer.overlay import bar_box, bar_fill_width, draw_overlay, field_box, overlay_texts
from encoders.services.viewer.plot import DriftPlot
from encoders.services.viewer.subscriptions import core_lines, listening_lines
from encoders.shared.messages import MetricsRecord


def record(similarity=0.987, drift=0.013, fps=14.2, embedded=120, dropped=3, stream="cam0") -> MetricsRecord:
    return MetricsRecord(
        stream=stream,
        seq=7,
        t_capture=100.0,
        t_encoded=100.1,
        worker="w1",
        model="ViT-B-32",
        similarity=similarity,
        drift=drift,
        rolling={},
        fps=fps,
        counts={"embedded": embedded, "dropped": dropped},
    )


def scene(h=480, w=640) -> np.ndarray:
    """A busy background (gradients and noise), so text and bar must stand out of real video."""
    rng = np.random.default_rng(1)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, w)[None, :]
    img[:, :, 1] = np.linspace(255, 0, h)[:, None]
    img[:, :, 2] = rng.integers(0, 256, (h, w))
    return img


def crop(img: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def changed_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(axis=2)


def inside(mask: np.ndarray, *boxes) -> np.ndarray:
    allowed = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        allowed[y0:y1, x0:x1] = True
    return mask & ~allowed


def test_same_values_draw_the_same_pixels_and_leave_the_input_alone():
    img = scene()
    before = img.copy()
    a = draw_overlay(img, "cam0", record(), 15.0)
    b = draw_overlay(img, "cam0", record(), 15.0)
    assert np.array_equal(a, b)
    assert np.array_equal(img, before)
    assert a.shape == img.shape and a.dtype == np.uint8
    # Outside the panel the video is untouched.
    px0, py0, px1, py1 = overlay.panel_box()
    outside = np.ones(img.shape[:2], bool)
    outside[py0:py1, px0:px1] = False
    assert np.array_equal(a[outside], img[outside])


@pytest.mark.parametrize(
    "field, change",
    [
        ("stream", {"stream": "garage"}),
        ("fps", {"fps": 3.5}),
        ("similarity", {"similarity": 0.5}),
        ("counts", {"embedded": 121}),
        ("counts", {"dropped": 40}),
    ],
)
def test_a_changed_value_changes_only_its_own_region(field, change):
    img = scene()
    stream = change.pop("stream", "cam0")
    fps = change.pop("fps", 15.0)
    a = draw_overlay(img, "cam0", record(), 15.0)
    b = draw_overlay(img, stream, record(**change), fps)
    diff = changed_mask(a, b)
    assert crop(diff, field_box(field)).sum() > 20
    assert not inside(diff, field_box(field)).any()


def test_drift_changes_its_text_and_the_bar_only():
    img = scene()
    a = draw_overlay(img, "cam0", record(drift=0.013), 15.0)
    b = draw_overlay(img, "cam0", record(drift=0.3), 15.0)
    diff = changed_mask(a, b)
    assert crop(diff, field_box("drift")).sum() > 20
    assert crop(diff, bar_box()).sum() > 100
    assert not inside(diff, field_box("drift"), bar_box()).any()


@pytest.mark.parametrize(
    "field, metrics, text",
    [
        ("similarity", record(similarity=0.987), "Similarity: 0.987"),
        ("drift", record(drift=0.013), "Drift: 0.013"),
        ("similarity", record(similarity=None, drift=None), "Similarity: -"),
        ("drift", record(similarity=None, drift=None), "Drift: -"),
        ("similarity", None, "Similarity: -"),
        ("counts", record(embedded=120, dropped=3), "Embedded: 120  Dropped: 3"),
        ("counts", None, "Embedded: -  Dropped: -"),
        ("stream", None, "cam0"),
    ],
)
def test_each_value_region_shows_the_expected_text(field, metrics, text):
    # On black, the shaded panel stays black: the region must be exactly the expected text
    # written on black at the same place.
    black = np.zeros((480, 640, 3), np.uint8)
    shown = draw_overlay(black, "cam0", metrics, 15.0)
    expected = black.copy()
    overlay.draw_text(expected, field, text)
    assert crop(expected, field_box(field)).any()
    assert np.array_equal(crop(shown, field_box(field)), crop(expected, field_box(field)))


def test_unknown_values_show_a_dash():
    texts = overlay_texts("cam0", record(similarity=None, drift=None), 12.0)
    assert texts["similarity"] == "Similarity: -" and texts["drift"] == "Drift: -"
    assert overlay_texts("cam0", None, 12.34)["fps"] == "FPS: 12.3"
    assert overlay_texts("cam0", record(fps=9.87), 12.0)["fps"] == "FPS: 12.0 (embed 9.9)"
    # A dash has much less ink than a number.
    black = np.zeros((480, 640, 3), np.uint8)
    dash = crop(draw_overlay(black, "cam0", None, 0.0), field_box("similarity")).astype(int).sum()
    number = crop(draw_overlay(black, "cam0", record(similarity=0.987), 0.0), field_box("similarity")).astype(int).sum()
    assert 0 < dash < 0.9 * number


def test_counts_fall_back_to_ingest_counters_before_metrics_and_ended_streams_say_so():
    texts = overlay_texts("cam0", None, 0.0, fallback_counts={"dropped": 17}, ended=True)
    assert texts["counts"] == "Embedded: -  Dropped: 17"
    assert texts["stream"] == "cam0 (ended)"


def filled_columns(img: np.ndarray) -> int:
    """Columns of the bar's middle row that are not the empty-bar grey."""
    x0, y0, x1, y1 = bar_box()
    row = img[(y0 + y1) // 2, x0:x1]
    return int((row != np.array(overlay.BAR_EMPTY, np.uint8)).any(axis=1).sum())


@pytest.mark.parametrize("drift", [0.0, 0.01, 0.05, 0.1, 0.25, 0.4, 0.5])
def test_bar_length_is_proportional_to_drift(drift):
    width = bar_box()[2] - bar_box()[0]
    img = draw_overlay(scene(), "cam0", record(drift=drift), 15.0)
    assert filled_columns(img) == bar_fill_width(drift)
    assert abs(filled_columns(img) - drift / overlay.DRIFT_FULL_SCALE * width) <= 1


@pytest.mark.parametrize("drift, columns", [(0.9, "full"), (2.0, "full"), (-0.1, 0), (None, 0), (float("nan"), 0)])
def test_bar_is_clipped_and_empty_when_unknown(drift, columns):
    width = bar_box()[2] - bar_box()[0]
    img = draw_overlay(scene(), "cam0", record(drift=drift), 15.0)
    assert filled_columns(img) == (width if columns == "full" else columns)


def test_bar_goes_from_green_to_red():
    _b, g, r = overlay.bar_colour(0.0)
    assert g == 255 and r == 0
    _b, g, r = overlay.bar_colour(0.5)
    assert g == 0 and r == 255
    # The bar is drawn in that colour.
    x0, y0, _, y1 = bar_box()
    img = draw_overlay(scene(), "cam0", record(drift=0.45), 15.0)
    assert tuple(img[(y0 + y1) // 2, x0 + 2]) == overlay.bar_colour(0.45)


def test_a_long_stream_name_stays_in_its_box_and_a_small_image_does_not_break():
    img = scene()
    a = draw_overlay(img, "x" * 64, None, 0.0)
    b = draw_overlay(img, "y" * 64, None, 0.0)
    assert not inside(changed_mask(a, b), field_box("stream")).any()
    small = draw_overlay(scene(60, 80), "cam0", record(), 15.0)
    assert small.shape == (60, 80, 3)


def history(n: int, level: float, t0: float = 1000.0):
    return [(t0 + i / 15, level + 0.01 * (i % 5)) for i in range(n)]


@pytest.mark.parametrize("size", [(480, 480), (333, 517), (800, 960)])
def test_plot_has_the_requested_size(size):
    img = DriftPlot(*size).render({"cam0": history(50, 0.1)})
    assert img.shape == (size[1], size[0], 3) and img.dtype == np.uint8


def test_plot_changes_with_the_data():
    plot = DriftPlot(480, 480)
    empty = plot.render({})
    one = plot.render({"cam0": history(100, 0.05)})
    other = plot.render({"cam0": history(100, 0.3)})
    two = plot.render({"cam0": history(100, 0.05), "cam1": history(100, 0.3)})
    assert not np.array_equal(empty, one)
    assert not np.array_equal(one, other)
    assert not np.array_equal(one, two)
    assert np.array_equal(one, plot.render({"cam0": history(100, 0.05)}))
    # A line is drawn: many non-white, non-grey pixels inside the axes.
    assert (one.max(axis=2).astype(int) - one.min(axis=2) > 60).sum() > 100


def test_plot_redraws_only_when_data_changed_and_the_interval_passed():
    plot = DriftPlot(320, 240, interval=0.25)
    data = {"cam0": history(10, 0.1)}
    first = plot.image(data, now=10.0)
    assert plot.image(data, now=20.0) is first  # same data: no redraw however late
    more = {"cam0": history(11, 0.1)}
    assert plot.image(more, now=10.1) is first  # too soon
    assert plot.image(more, now=10.3) is not first


def test_layout_fits_tiles_in_a_grid_and_puts_the_plot_beside():
    frame = np.full((480, 640, 3), 50, np.uint8)
    assert layout.fit(frame, 640, 480) is frame
    small = layout.fit(frame, 320, 320)  # letterboxed: 320x240 centred
    assert small.shape == (320, 320, 3)
    assert small[0, 0].sum() == 0 and small[160, 160].tolist() == [50, 50, 50]
    assert layout.grid([frame]).shape == (480, 640, 3)
    assert layout.grid([frame] * 2).shape == (480, 1280, 3)
    assert layout.grid([frame] * 3).shape == (960, 1280, 3)
    assert layout.grid([frame] * 4).shape == (960, 1280, 3)
    w, h = layout.plot_size(480)
    canvas = layout.side_by_side(frame, np.full((h, w, 3), 255, np.uint8))
    assert canvas.shape == (480, 640 + w, 3)
    assert np.array_equal(canvas[:, :640], frame)
    wait = layout.placeholder(listening_lines(["tcp://a:5555", "tcp://b:5555"], "tcp://m:5558"))
    assert wait.shape == (480, 640, 3) and wait.any()
    assert not np.array_equal(wait, layout.placeholder(listening_lines(["tcp://a:5555"], "tcp://m:5558")))
    asking = layout.placeholder(core_lines("tcp://10.0.0.5:5556"))
    assert asking.shape == (480, 640, 3) and not np.array_equal(asking, wait)
    # The longest line fits the placeholder's width: nothing is cut off on the right.
    longest = max(core_lines("tcp://255.255.255.255:65535"), key=len)
    (text_w, _), _ = cv2.getTextSize(longest, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
    assert 20 + text_w < 640
