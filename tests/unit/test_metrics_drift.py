"""Drift math against values worked out by hand."""

import math

import numpy as np
import pytest

from encoders.services.metrics.drift import DriftTracker, consecutive_similarities, cosine_similarity
from encoders.services.metrics.reorder import LOST
from encoders.services.metrics.streams import DROPPED, VECTORISE_FROM, Streams
from encoders.shared.messages import Embedding, EndOfStream, MetricsRecord, Skipped, StreamStart


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


def numbered(s: Streams, stream: str, n: int, now: float = 0) -> None:
    for _ in range(n):
        s.numbered(stream, s.streams[stream].next_number, now)


def test_streams_counts_add_up_and_records_come_in_order():
    s = Streams(rolling_window=10, max_wait=1, core="life-1")
    s.start_epoch("cam0", 0, now=0)
    numbered(s, "cam0", 5)
    s.outcome("cam0", 2, Embedding("cam0", 2, 0.2, "w", "m", vector=unit(0, 1), thumbnail=b"jpg"), now=0)
    s.outcome("cam0", 1, DROPPED, now=0)
    s.outcome("cam0", 0, Embedding("cam0", 0, 0.0, "w", "m", vector=unit(1, 0)), now=0)
    s.outcome("cam0", 3, Skipped("cam0", 3, "w", "corrupt JPEG"), now=0)
    s.end_epoch("cam0", {"corrupt": 2})
    out = s.release(now=0)
    assert isinstance(out[0], StreamStart) and out[0].first_seq == 0
    recs = [m for m in out if isinstance(m, MetricsRecord)]
    assert [(m.seq, m.similarity) for m in recs] == [(0, None), (2, pytest.approx(0.0))]
    assert recs[1].core == "life-1" and recs[1].thumbnail == b"jpg" and recs[1].counts["embedded"] == 2
    assert not any(isinstance(m, EndOfStream) for m in out)  # seq 4 still awaited
    assert not s.settled("cam0")
    s.outcome("cam0", 4, LOST, now=0.5)  # its worker vanished: given up at once, no wait
    (eos,) = s.release(now=0.5)
    assert isinstance(eos, EndOfStream) and eos.last_seq == 4
    assert eos.counts == {
        "published": 5,
        "embedded": 2,
        "dropped": 1,
        "skipped": 1,
        "lost": 1,
        "late": 0,
        "corrupt": 2,
    }
    assert s.settled("cam0")


def test_two_streams_never_mix():
    s = Streams(rolling_window=10, max_wait=1)
    for name in ("a", "b"):
        s.start_epoch(name, 0, now=0)
        numbered(s, name, 2)
    s.outcome("a", 0, Embedding("a", 0, 0, "w", "m", vector=unit(1, 0)), now=0)
    s.outcome("b", 0, Embedding("b", 0, 0, "w", "m", vector=unit(0, 1)), now=0)
    s.outcome("a", 1, Embedding("a", 1, 1, "w", "m", vector=unit(1, 0)), now=0)
    recs = {(m.stream, m.seq): m for m in s.release(now=0) if isinstance(m, MetricsRecord)}
    assert recs[("a", 1)].similarity == pytest.approx(1.0)  # compared with a#0, not b#0
    assert recs[("b", 0)].similarity is None


def test_a_new_epoch_starts_drift_afresh_without_losing_frames_in_flight():
    s = Streams(rolling_window=10, max_wait=5)
    s.start_epoch("cam0", 0, now=0)
    numbered(s, "cam0", 3)  # 0, 1, 2: 1 and 2 still in workers' hands when the ingest restarts
    s.outcome("cam0", 0, Embedding("cam0", 0, 0, "w", "m", vector=unit(1, 0)), now=0)
    s.start_epoch("cam0", 3, now=1, url="http://cam")  # the old epoch ends at 2
    numbered(s, "cam0", 2)  # 3, 4
    s.outcome("cam0", 3, Skipped("cam0", 3, "w", "corrupt"), now=1)
    s.outcome("cam0", 4, Embedding("cam0", 4, 4, "w", "m", vector=unit(1, 0)), now=1)
    s.outcome("cam0", 2, Embedding("cam0", 2, 2, "w", "m", vector=unit(0, 1)), now=1)
    s.outcome("cam0", 1, Embedding("cam0", 1, 1, "w", "m", vector=unit(0, 1)), now=2)
    out = s.release(now=2)
    shape = [(type(m).__name__, getattr(m, "seq", None), getattr(m, "similarity", None)) for m in out]
    assert shape == [
        ("StreamStart", None, None),
        ("MetricsRecord", 0, None),
        ("MetricsRecord", 1, pytest.approx(0.0)),
        ("MetricsRecord", 2, pytest.approx(1.0)),  # the old epoch's frames, in order, compared as before
        ("EndOfStream", None, None),
        ("StreamStart", None, None),
        ("MetricsRecord", 4, None),  # the first embedded at or after the epoch's first_seq: no similarity
    ]
    end, start = out[4], out[5]
    assert isinstance(end, EndOfStream) and isinstance(start, StreamStart)
    assert (end.last_seq, start.first_seq, start.url) == (2, 3, "http://cam")


def test_undelivered_captures_count_as_published_and_dropped():
    s = Streams(rolling_window=10, max_wait=1)
    s.start_epoch("cam0", 0, now=0, undelivered=7)
    numbered(s, "cam0", 1)
    s.outcome("cam0", 0, DROPPED, now=0)
    s.end_epoch("cam0")
    eos = s.release(now=0)[-1]
    assert isinstance(eos, EndOfStream)
    assert eos.counts["published"] == 8 and eos.counts["dropped"] == 8


def test_numbers_skipped_by_a_raised_floor_are_no_frames():
    s = Streams(rolling_window=10, max_wait=1)
    s.start_epoch("cam0", 0, now=0)
    s.numbered("cam0", 0, now=0)
    s.numbered("cam0", 500, now=0)  # the recorder's Ready raised the floor meanwhile
    s.outcome("cam0", 500, Embedding("cam0", 500, 1, "w", "m", vector=unit(1, 0)), now=0)
    s.outcome("cam0", 0, Embedding("cam0", 0, 0, "w", "m", vector=unit(1, 0)), now=0)
    s.end_epoch("cam0")
    eos = s.release(now=0)[-1]
    assert isinstance(eos, EndOfStream) and eos.last_seq == 500
    assert eos.counts["published"] == 2 and eos.counts["embedded"] == 2 and eos.counts["lost"] == 0


def test_an_epoch_that_numbered_nothing_ends_before_its_first_seq():
    s = Streams(rolling_window=10, max_wait=1)
    s.start_epoch("cam0", 40, now=0)
    s.end_epoch("cam0")
    start, eos = s.release(now=0)
    assert isinstance(start, StreamStart) and start.first_seq == 40
    assert isinstance(eos, EndOfStream) and eos.last_seq == 39 and eos.counts["published"] == 0
    assert s.settled("cam0")


def test_a_result_after_its_frame_was_given_up_is_late():
    s = Streams(rolling_window=10, max_wait=1)
    s.start_epoch("cam0", 0, now=0)
    numbered(s, "cam0", 2)
    s.outcome("cam0", 1, DROPPED, now=0)
    s.release(now=2)  # 0 given up behind the drop
    assert not s.outcome("cam0", 0, Embedding("cam0", 0, 0, "w", "m", vector=unit(1, 0)), now=3)
    assert not s.outcome("cam0", 0, LOST, now=3)  # the core's own give-up of it: not late
    assert s.totals("cam0")["late"] == 1 and s.totals("cam0")["lost"] == 1


@pytest.mark.parametrize("window", [1, 2, 3, 7, 50])
def test_rolling_min_and_max_are_the_windows_own_at_every_step(window):
    """Kept incrementally (monotonic queues): equal to a pass over the window at every frame,
    through rises, falls, ties and the window sliding."""
    rng = np.random.default_rng(window)
    t = DriftTracker(window=window)
    expected: list[float] = []
    previous = unit(1, 0)
    t.update(previous, 0.0)
    for i in range(400):
        # Ties on purpose (few distinct directions), and runs of rising and falling drift.
        angle = float(rng.choice([0.0, 0.3, 0.6, 1.2, 2.5])) if i % 50 < 40 else 0.01 * (i % 50)
        v = unit(math.cos(angle), math.sin(angle))
        _, drift = t.update(v, float(i + 1))
        assert drift is not None  # every frame after the first has one
        expected = [*expected, drift][-window:]
        r = t.rolling()
        assert (r["min"], r["max"], r["count"]) == (min(expected), max(expected), len(expected))


def test_a_runs_similarities_in_one_go_are_the_pairs_own():
    """Row-wise over a run (the core's release of many frames of a stream): each vector against the
    one before, as cosine_similarity gives it, through zero vectors, float32's extremes (in float64,
    as the pair's), identical and opposite neighbours, and another length of embedding mid-run."""
    rng = np.random.default_rng(7)
    vectors = [v.astype(np.float32) for v in rng.normal(size=(12, 512))]
    vectors[3] = np.zeros(512, np.float32)
    vectors[5] = np.full(512, 3e38, np.float32)  # a float32 norm would overflow
    vectors[6] = np.full(512, 1e-44, np.float32)  # ... or underflow to 0
    vectors[8] = vectors[7].copy()
    vectors[9] = -vectors[8]
    got = consecutive_similarities(vectors)
    assert got[0] is None
    for i in range(1, len(vectors)):
        assert got[i] == pytest.approx(cosine_similarity(vectors[i - 1], vectors[i]), abs=1e-12), i
    assert (got[4], got[8], got[9]) == (0.0, pytest.approx(1.0), pytest.approx(-1.0))
    assert got[6] == pytest.approx(1.0) and got[7] == pytest.approx(cosine_similarity(vectors[6], vectors[7]))

    mixed = [unit(1, 0), unit(1, 1), unit(1, 0, 0), unit(0, 1, 0), unit(0, 1)]
    assert consecutive_similarities(mixed) == [None, pytest.approx(math.sqrt(0.5)), None, pytest.approx(0.0), None]
    assert consecutive_similarities([unit(1, 0)]) == [None] and consecutive_similarities([]) == []


def records_of(out):
    return [
        (m.seq, m.similarity, m.drift, dict(m.rolling), m.scene_change) for m in out if isinstance(m, MetricsRecord)
    ]


def test_a_run_released_at_once_has_the_drift_of_frames_released_one_by_one():
    """Many frames of a stream released together get their similarities in one go; each record's
    similarity, drift, rolling statistics and scene change are those of the same frames released
    one at a time, with a skipped frame, a new epoch and another length of embedding in the run
    (drift starts afresh at each: no similarity across them)."""
    rng = np.random.default_rng(3)
    head, tail = 2 * VECTORISE_FROM + 6, VECTORISE_FROM + 2
    n = head + tail
    # Another model from ``head`` on: vectors of 4 values after 8.
    vectors = [unit(*v) for v in rng.normal(size=(head, 8))] + [unit(*v) for v in rng.normal(size=(tail, 4))]
    epoch_at, skipped_at = head // 2, 5

    def feed(s: Streams, seq: int) -> None:
        if seq == skipped_at:
            s.outcome("cam0", seq, Skipped("cam0", seq, "w", "corrupt"), now=0)
        else:
            s.outcome("cam0", seq, Embedding("cam0", seq, float(seq), "w", "m", vector=vectors[seq]), now=0)

    def streams() -> Streams:
        s = Streams(rolling_window=5, max_wait=5)
        s.start_epoch("cam0", 0, now=0)
        numbered(s, "cam0", epoch_at)
        s.start_epoch("cam0", epoch_at, now=0)
        numbered(s, "cam0", n - epoch_at)
        return s

    one_by_one, at_once = streams(), streams()
    singles = []
    for seq in range(n):
        feed(one_by_one, seq)
        singles += one_by_one.release(now=0)
    together = []
    for run in (range(head), range(head, n)):  # each run's first frame last: the others wait, then all go
        for seq in reversed(run):
            feed(at_once, seq)
        together += at_once.release(now=0)
    expected, got = records_of(singles), records_of(together)
    assert len(got) == n - 1
    assert [r[0] for r in got] == [r[0] for r in expected]
    for (seq, sim, drift, rolling, scene), (_, sim1, drift1, rolling1, scene1) in zip(got, expected, strict=True):
        if sim1 is None:
            assert (sim, drift) == (None, None), seq
        else:
            assert (sim, drift) == (pytest.approx(sim1, abs=1e-12), pytest.approx(drift1, abs=1e-12)), seq
        assert rolling == pytest.approx(rolling1, abs=1e-12) and scene == scene1, seq
    firsts = [seq for seq, sim, *_ in got if sim is None]
    assert firsts == [0, epoch_at, head]
