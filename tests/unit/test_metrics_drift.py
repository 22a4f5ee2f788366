"""Drift math against values worked out by hand."""

import math

import numpy as np
import pytest

from encoders.services.metrics.drift import DriftTracker, cosine_similarity
from encoders.services.metrics.streams import Streams
from encoders.shared.messages import Dropped, Embedding, EndOfStream, MetricsRecord, Skipped, StreamStart


def unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_cosine_similarity_by_hand():
    assert cosine_similarity(unit(1, 0), unit(1, 0)) == pytest.approx(1.0)
    assert cosine_similarity(unit(1, 0), unit(0, 1)) == pytest.approx(0.0)
    assert cosine_similarity(unit(1, 0), unit(1, 1)) == pytest.approx(math.sqrt(0.5))
    assert cosine_similarity(np.array([2.0, 0]), np.array([3.0, 0])) == pytest.approx(1.0)  # not normalised
    assert cosine_similarity(np.zeros(2), unit(1, 0)) == 0.0


def test_first_frame_has_no_similarity_then_drift_is_one_minus_cosine():
    t = DriftTracker(window=10)
    assert t.update(unit(1, 0), 0.0) == (None, None)
    sim, drift = t.update(unit(1, 1), 0.1)
    assert sim == pytest.approx(0.70710678)
    assert drift == pytest.approx(1 - 0.70710678)
    sim, drift = t.update(unit(0, 1), 0.2)  # compared with the previous frame, not the first
    assert sim == pytest.approx(0.70710678)


def test_rolling_statistics_over_the_window_only():
    t = DriftTracker(window=3)
    vectors = [unit(1, 0), unit(1, 0), unit(0, 1), unit(0, 1), unit(1, 0)]
    for i, v in enumerate(vectors):
        t.update(v, float(i))
    # drifts: 0, 1, 0, 1 -> window of 3 keeps [1, 0, 1]
    r = t.rolling()
    assert r["count"] == 3
    assert r["mean"] == pytest.approx(2 / 3)
    assert r["std"] == pytest.approx(math.sqrt(2 / 9))
    assert (r["min"], r["max"]) == (pytest.approx(0.0), pytest.approx(1.0))
    assert t.fps() == pytest.approx(1.0)  # the window holds t = 2, 3, 4: 2 intervals in 2 s


def test_streams_counts_add_up_and_records_come_in_order():
    s = Streams(rolling_window=10, max_wait=1)
    s.accept(StreamStart("cam0", 0), now=0)
    s.accept(Embedding("cam0", 2, 0.2, "w", "m", vector=unit(0, 1)), now=0)
    s.accept(Dropped("cam0", 1), now=0)
    s.accept(Embedding("cam0", 0, 0.0, "w", "m", vector=unit(1, 0)), now=0)
    s.accept(Skipped("cam0", 3, "w", "corrupt JPEG"), now=0)
    s.accept(EndOfStream("cam0", 4, {"published": 5}), now=0)
    out = s.release(now=0)
    assert [(m.seq, m.similarity) for m in out if isinstance(m, MetricsRecord)] == [(0, None), (2, pytest.approx(0.0))]
    assert not any(isinstance(m, EndOfStream) for m in out)  # seq 4 still awaited
    out = s.release(now=2)
    eos = out[-1]
    assert isinstance(eos, EndOfStream)
    assert eos.counts == {"embedded": 2, "dropped": 1, "skipped": 1, "lost": 1, "late": 0, "published": 5}
    assert sum(eos.counts[k] for k in ("embedded", "dropped", "skipped", "lost")) == eos.counts["published"]


def test_two_streams_never_mix():
    s = Streams(rolling_window=10, max_wait=1)
    for name in ("a", "b"):
        s.accept(StreamStart(name, 0), now=0)
    s.accept(Embedding("a", 0, 0, "w", "m", vector=unit(1, 0)), now=0)
    s.accept(Embedding("b", 0, 0, "w", "m", vector=unit(0, 1)), now=0)
    s.accept(Embedding("a", 1, 1, "w", "m", vector=unit(1, 0)), now=0)
    recs = {(m.stream, m.seq): m for m in s.release(now=0) if isinstance(m, MetricsRecord)}
    assert recs[("a", 1)].similarity == pytest.approx(1.0)  # compared with a#0, not b#0
    assert recs[("b", 0)].similarity is None
