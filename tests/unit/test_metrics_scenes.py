"""The scene-change rule against values worked out by hand, and as the metrics service applies it."""

import numpy as np
import pytest

from encoders.services.metrics.config import MetricsConfig
from encoders.services.metrics.scenes import SceneRule
from encoders.services.metrics.streams import Streams
from encoders.shared.messages import Embedding, MetricsRecord


def window(values):
    """DriftTracker.rolling()'s statistics of these drifts, computed here by hand (population std)."""
    n = len(values)
    mean = sum(values) / n
    return {"count": n, "mean": mean, "std": (sum((v - mean) ** 2 for v in values) / n) ** 0.5}


def test_threshold_rule_alone():
    rule = SceneRule(threshold=0.3)
    assert rule.is_change(0.3, {"count": 0})  # at the threshold counts
    assert not rule.is_change(0.2999, {"count": 0})
    assert not rule.is_change(None, {"count": 0})  # a stream's first frame has no drift


def test_adaptive_rule_by_hand():
    # drifts 0.01, 0.03, 0.01, 0.03: mean 0.02, population std 0.01. With k = 3 the bar is 0.05.
    w = {"count": 4, "mean": 0.02, "std": 0.01}
    assert window([0.01, 0.03, 0.01, 0.03]) == pytest.approx(w)
    rule = SceneRule(k=3.0, min_drift=0.0, min_frames=4)
    assert rule.is_change(0.0501, w)
    assert not rule.is_change(0.05, w)  # strictly above
    assert not rule.is_change(0.049, w)


def test_adaptive_rule_waits_for_enough_frames_and_ignores_tiny_drifts():
    w = window([0.01, 0.03, 0.01, 0.03])
    assert not SceneRule(k=3.0, min_frames=5).is_change(0.2, w)  # 4 drifts in the window, 5 wanted
    # A still scene: mean 0.001, std 0 -> any wobble is "k std above"; the floor keeps it quiet.
    still = window([0.001] * 10)
    assert not SceneRule(k=3.0, min_drift=0.05, min_frames=2).is_change(0.01, still)
    assert SceneRule(k=3.0, min_drift=0.05, min_frames=2).is_change(0.06, still)


def test_either_rule_is_enough_and_zero_turns_a_rule_off():
    w = window([0.1, 0.1, 0.1])  # std 0
    both = SceneRule(threshold=0.5, k=2.0, min_drift=0.0, min_frames=2)
    assert both.is_change(0.12, w)  # adaptive
    assert both.is_change(0.6, {"count": 0})  # threshold, before the window fills
    assert not SceneRule(threshold=0.0, k=0.0).is_change(0.99, w)


def test_from_config_takes_the_metrics_settings():
    cfg = MetricsConfig(scene_threshold=0.4, scene_k=5.0, scene_min_drift=0.02, scene_min_frames=10)
    assert SceneRule.from_config(cfg) == SceneRule(0.4, 5.0, 0.02, 10)
    defaults = SceneRule.from_config(MetricsConfig())
    assert defaults.threshold > 0 and defaults.k > 0


def unit(angle):
    return np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)


def embed(s: Streams, angles: list[float]) -> None:
    """A stream's epoch from 0, each angle's frame numbered and embedded."""
    s.start_epoch("cam0", 0, now=0.0, url="url")
    for seq, a in enumerate(angles):
        s.numbered("cam0", seq, now=0.0)
        s.outcome("cam0", seq, Embedding("cam0", seq, float(seq), "w", "m", vector=unit(a)), now=0.0)


def test_streams_flag_the_frame_whose_drift_stands_out_from_the_window_before_it():
    s = Streams(rolling_window=50, max_wait=1, scenes=SceneRule(threshold=0.5, k=4.0, min_drift=0.01, min_frames=5))
    # Small steady turns (drift 1 - cos(0.02) ~ 0.0002), then one of 0.5 rad (drift 0.1224): a cut.
    angles = [0.02 * i for i in range(10)] + [0.18 + 0.5] + [0.68 + 0.02 * i for i in range(1, 5)]
    embed(s, angles)
    recs = [m for m in s.release(now=0.0) if isinstance(m, MetricsRecord)]
    assert [r.seq for r in recs if r.scene_change] == [10]
    assert recs[10].drift == pytest.approx(1 - np.cos(0.5), abs=1e-6)
    # Without a rule (the default) nothing is flagged.
    plain = Streams(rolling_window=50, max_wait=1)
    embed(plain, angles)
    assert not any(m.scene_change for m in plain.release(now=0.0) if isinstance(m, MetricsRecord))
