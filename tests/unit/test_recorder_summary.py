"""summary.json statistics against values worked out by hand."""

import json
import math

import numpy as np
import pytest

from encoders.services.recorder.summary import RunningStats, StreamSummary
from encoders.shared.messages import FrameCounts, MetricsRecord


def record(seq, t, similarity, counts: FrameCounts | None = None):
    return MetricsRecord(
        stream="cam0",
        seq=seq,
        t_capture=t,
        t_encoded=t + 0.05,
        worker="w1",
        model="ViT-B-32",
        similarity=similarity,
        drift=None if similarity is None else 1.0 - similarity,
        counts=counts if counts is not None else FrameCounts(),
        vector=np.ones(4, np.float32) / 2,
    )


def test_running_stats_by_hand():
    s = RunningStats()
    for x in (0.1, 0.3, 0.2, 0.6):
        s.add(x)
    # mean = 1.2 / 4 = 0.3; squared deviations 0.04, 0, 0.01, 0.09 -> 0.14 / 4 = 0.035
    assert s.count == 4
    assert s.mean == pytest.approx(0.3)
    assert s.std == pytest.approx(math.sqrt(0.035))
    assert (s.min, s.max) == (0.1, 0.6)


def test_empty_stats_are_null_not_zero():
    assert RunningStats().to_dict() == {"count": 0, "mean": None, "std": None, "min": None, "max": None}


def test_stream_summary_by_hand():
    s = StreamSummary("cam0")
    sims = [None, 0.9, 0.7, 0.8, 1.0]  # drifts: 0.1, 0.3, 0.2, 0.0
    for i, sim in enumerate(sims):
        s.add(
            record(
                seq=10 + 2 * i,
                t=1000.0 + 0.5 * i,
                similarity=sim,
                counts={"embedded": i + 1, "dropped": i, "skipped": 0, "lost": 0},
            ),
            snapshot=(i in (0, 3)),
        )
    d = s.to_dict(npz_batches=2, db_rows=5)
    assert d["records"] == 5
    assert (d["first_seq"], d["last_seq"]) == (10, 18)
    assert d["drift"]["count"] == 4
    assert d["drift"]["mean"] == pytest.approx(0.15)
    # deviations from 0.15: -0.05, 0.15, 0.05, -0.15 -> squares sum 0.05 -> /4 = 0.0125
    assert d["drift"]["std"] == pytest.approx(math.sqrt(0.0125))
    assert d["drift"]["min"] == pytest.approx(0.0)
    assert d["drift"]["max"] == pytest.approx(0.3)
    assert d["similarity"]["mean"] == pytest.approx(0.85)
    assert d["similarity"]["min"] == pytest.approx(0.7)
    assert d["duration_s"] == pytest.approx(2.0)
    assert d["effective_fps"] == pytest.approx(2.0)  # 4 intervals in 2 s
    assert d["start_time"] == "1970-01-01T00:16:40+00:00"
    assert d["snapshots"] == 2 and d["npz_batches"] == 2 and d["db_rows"] == 5
    assert d["model"] == "ViT-B-32" and d["dim"] == 4
    # No end of stream yet: the latest record's running counts (published unknown).
    assert d["counts_from"] == "last_record" and not d["ended"]
    assert d["frames"] == {
        "published": None,
        "embedded": 5,
        "dropped": 4,
        "skipped": 0,
        "lost": 0,
        "late": None,
        "not_stored": 0,
    }


def test_end_of_stream_counts_win():
    s = StreamSummary("cam0")
    s.add(record(0, 5.0, None, counts={"embedded": 1}))
    final = {"published": 12, "embedded": 9, "dropped": 2, "skipped": 1, "lost": 0, "late": 3}
    s.end(final)
    d = s.to_dict()
    assert d["frames"] == {**final, "not_stored": 0}
    assert d["counts_from"] == "end_of_stream" and d["ended"]
    assert d["effective_fps"] is None  # a single frame has no rate
    assert d["similarity"] == {"mean": None, "min": None}


def test_embedded_falls_back_to_records_seen():
    s = StreamSummary("cam0")
    for i in range(3):
        s.add(record(i, float(i), None if i == 0 else 0.5))
    assert s.frames()["embedded"] == 3


def counts(published, embedded, dropped=0, skipped=0, lost=0) -> FrameCounts:
    return FrameCounts(published=published, embedded=embedded, dropped=dropped, skipped=skipped, lost=lost, late=0)


def test_frames_a_crashed_core_never_accounted_for_are_counted_lost():
    """Life L1 numbered seqs 10.. and released up to seq 14 (its last record) when it died; the
    ingest had sent it 8 captures (seqs 10..17). The next life's StreamStart says so."""
    s = StreamSummary("cam0")
    s.start(10, "L1")
    for seq in range(10, 15):
        s.add(record(seq, float(seq), 0.9, counts=counts(published=7, embedded=seq - 9)), core="L1")
    assert s.frames()["published"] == 7  # until then: the last record's counts
    s.start(100, "L2", previous_core="L1", previous_sent=8)
    s.add(record(100, 100.0, None, counts=counts(published=1, embedded=1)), core="L2")
    f = s.frames()
    # L1: 5 embedded + 3 lost (seqs 15, 16, 17) = 8 published; L2: 1.
    assert (f["published"], f["embedded"], f["lost"]) == (9, 6, 3)
    assert f["published"] == f["embedded"] + f["dropped"] + f["skipped"] + f["lost"]


def test_an_epoch_that_ended_counts_only_the_captures_that_never_arrived():
    """L1 ended the epoch (the ingest's session expired: seqs 0..4 numbered) and then died; the
    ingest had sent 7: two were in a connection that died."""
    s = StreamSummary("cam0")
    s.start(0, "L1")
    s.end(dict(counts(published=5, embedded=4, dropped=1)), "L1", last_seq=4)
    s.start(5, "L2", previous_core="L1", previous_sent=7)
    f = s.frames()
    assert (f["published"], f["embedded"], f["dropped"], f["lost"]) == (7, 4, 1, 2)


def test_what_a_life_accounted_for_is_never_counted_twice():
    s = StreamSummary("cam0")
    s.start(0, "L1")
    s.end(dict(counts(published=5, embedded=5)), "L1", last_seq=4)
    s.start(5, "L2", previous_core="L1", previous_sent=5)  # all 5 arrived
    assert s.frames()["lost"] == 0 and s.frames()["published"] == 5
    restored = StreamSummary("cam0")  # a resumed run: summary.json's lives carry the claim
    restored.restore_counts(s.to_dict()["lives"])
    assert restored.frames() == s.frames()


def test_a_clock_set_back_during_the_stream_never_makes_a_negative_duration():
    """Issue #22: an ingest an hour ahead, restarted with the right time: its later frames are
    older than its first. The duration runs from the earliest capture to the latest."""
    s = StreamSummary("cam0")
    for seq, t in enumerate([5000.0, 5001.0, 1400.0, 1401.0, 1402.0]):  # seq 2 on: the clock set right
        s.add(record(seq, t, None if seq == 0 else 0.9))
    d = s.to_dict()
    assert d["duration_s"] == pytest.approx(3601.0)  # 1400 .. 5001
    assert d["effective_fps"] == pytest.approx(4 / 3601.0)
    assert d["start_time"] == "1970-01-01T00:23:20+00:00" and d["end_time"] == "1970-01-01T01:23:21+00:00"
    assert (d["first_seq"], d["last_seq"]) == (0, 4)


def test_captures_a_hair_apart_have_no_rate_rather_than_an_infinite_one():
    """Found by the consumers' fuzz test: capture times 0 and 2.2e-309 s (a subnormal duration) made an
    infinite rate, which jsonb (the runs table's summary) refuses, so the run could not be closed."""
    s = StreamSummary("cam0")
    s.add(record(0, 0.0, None))
    s.add(record(1, 2.2250738585072014e-309, 0.9))
    d = s.to_dict()
    assert d["effective_fps"] is None
    json.dumps(d, allow_nan=False)  # what jsonb takes
