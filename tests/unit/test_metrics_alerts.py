"""The alerts a stream's records set off (issue #15): frozen feed, blackout; and the levels a
worker measures for the blackout."""

from __future__ import annotations

import cv2
import numpy as np

from encoders.services.encoder.preprocess import picture_levels
from encoders.services.metrics.alerts import AlertRules, Alerts

RULES = AlertRules(frozen_after=10.0, frozen_drift=0.001, blackout_contrast=6.0)


Frame = tuple[float, float | None, float | None]  # capture time, drift, contrast


def feed(alerts: Alerts, frames: list[Frame]) -> list[tuple[float, dict]]:
    out = []
    for t, drift, contrast in frames:
        events = alerts.on_record(t, drift, contrast)
        if events:
            out.append((t, events))
    return out


def test_a_still_picture_is_frozen_once_after_frozen_after_seconds_and_again_only_after_it_moved():
    still: list[Frame] = [(float(t), None if t == 0 else 0.0, 40.0) for t in range(25)]  # a frame a second
    moved: list[Frame] = [(25.0, 0.2, 40.0)]
    still_again: list[Frame] = [(float(t), 0.0, 40.0) for t in range(26, 40)]
    said = feed(Alerts(RULES), still + moved + still_again)
    assert said == [(10.0, {"frozen": 10.0}), (35.0, {"frozen": 10.0})]


def test_noise_above_frozen_drift_is_not_a_frozen_feed_and_off_means_off():
    noisy: list[Frame] = [(float(t), None if t == 0 else 0.002, 40.0) for t in range(60)]
    assert feed(Alerts(RULES), noisy) == []
    off: list[Frame] = [(float(t), 0.0, 0.0) for t in range(60)]
    assert feed(Alerts(AlertRules()), off) == []


def test_a_uniform_picture_is_a_blackout_once_until_a_picture_with_contrast():
    frames: list[Frame] = [(0.0, None, 40.0), (1.0, 0.3, 2.0), (2.0, 0.0, 1.5), (3.0, 0.3, 30.0), (4.0, 0.3, 3.0)]
    assert feed(Alerts(RULES), frames) == [(1.0, {"blackout": 2.0}), (4.0, {"blackout": 3.0})]


def test_picture_levels_see_dark_white_one_colour_and_a_scene():
    def jpeg_decoded(img: np.ndarray) -> np.ndarray:  # through JPEG, as a camera sends it
        ok, data = cv2.imencode(".jpg", img)
        assert ok
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert decoded is not None
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)

    black = jpeg_decoded(np.zeros((224, 224, 3), np.uint8))
    white = jpeg_decoded(np.full((224, 224, 3), 255, np.uint8))
    blue = jpeg_decoded(np.full((224, 224, 3), (200, 30, 10), np.uint8))
    scene = jpeg_decoded(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    for uniform in (black, white, blue):
        assert picture_levels(uniform)[1] < 3.0
    assert picture_levels(black)[0] < 5 and picture_levels(white)[0] > 250
    assert picture_levels(scene)[1] > 30


def test_a_frame_after_a_gap_of_stream_down_after_seconds_says_the_stream_is_back():
    from encoders.services.metrics.alerts import stream_back

    rules = AlertRules(stream_down_after=10.0)
    assert stream_back(rules, None, 100.0) == {}  # the stream's first frame
    assert stream_back(rules, 100.0, 105.0) == {}
    assert stream_back(rules, 100.0, 112.5) == {"stream_back": 12.5}
    assert stream_back(AlertRules(), 100.0, 1000.0) == {}  # off
