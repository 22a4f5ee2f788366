"""No message that decodes crashes the services that consume it.

Property-based (hypothesis): any sequence of valid messages, as they come out of decode,
fed to metrics' stream bookkeeping, to the viewer's state and page snapshot, to the
recorder (files, rows, summary), to ingest's work socket and to an encoder's intake and
decoding. The streams
and sequence numbers are drawn from few values, so that messages meet: an embedding whose
length differs from its stream's last one, a stream that starts, ends and starts again,
out-of-order and duplicate outcomes, and huge sequence numbers beside small ones.

Below the properties, one plain test for each crash they found.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from encoders.services.encoder.intake import Intake
from encoders.services.encoder.preprocess import Preprocessor, load_batch
from encoders.services.ingest.delivery import Delivery
from encoders.services.ingest.http_source import JpegFrame
from encoders.services.metrics.drift import DriftTracker, cosine_similarity
from encoders.services.metrics.reorder import LOST, Lost, StreamOrder
from encoders.services.metrics.streams import DROPPED, Streams
from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.recorder import Recorder
from encoders.services.recorder.rows import from_spool, to_spool
from encoders.services.recorder.run import RecordedRun
from encoders.services.viewer.overlay import overlay_texts
from encoders.services.viewer.snapshot import drift_since, snapshot
from encoders.services.viewer.state import ViewerState
from encoders.shared import messages
from encoders.shared.messages import (
    INT64_MAX,
    TIME_MAX,
    Credit,
    Embedding,
    EndOfStream,
    Frame,
    Message,
    MetricsRecord,
    Records,
    Results,
    Stats,
    StreamStart,
    rows_of,
)
from encoders.shared.storage.frames import copy_values

from .message_strategies import message_of, vectors

FUZZ = settings(deadline=None)  # a deadline flakes on a busy machine; the profile sets the rest

STREAMS = st.sampled_from(["cam0", "cam1"])
HUGE = st.sampled_from([10**18, INT64_MAX - 1])  # INT64_MAX - 1: the largest seq there is
# Mostly small seqs, so that outcomes meet in order; a huge one now and then (one_of draws
# each of its strategies alike, hence the repeats).
SEQS = st.one_of([st.integers(0, 8)] * 7 + [HUGE])
# Capture times: the edges (a hair apart, as far apart as floats go) as well as any.
TIMES = st.sampled_from([0.0, 5e-324, 1.0, TIME_MAX]) | st.floats(0, TIME_MAX)
# What the viewer takes from the core's publishers, and what it ignores. (The core's own
# bookkeeping under any events: tests/unit/test_core_streams_fuzz.py.)
TO_VIEWER = st.one_of(
    message_of(Frame, stream=STREAMS, seq=SEQS),
    *[message_of(Results, stream=STREAMS, seq=SEQS, t_capture=TIMES)] * 2,  # not the viewer's: ignored
    message_of(Records, stream=STREAMS, seq=SEQS),  # as the core publishes records
    message_of(MetricsRecord, stream=STREAMS, seq=SEQS, vector=vectors(st.sampled_from([0, 3]))),
    message_of(MetricsRecord, stream=STREAMS, seq=SEQS, vector=vectors(st.sampled_from([0, 3]))),
    message_of(EndOfStream, stream=STREAMS),
    message_of(Stats, stream=STREAMS, service=st.sampled_from(["ingest", "metrics", "other"])),
    message_of(Stats, stream=STREAMS, service=st.sampled_from(["ingest", "metrics"])),
    message_of(StreamStart, stream=STREAMS),
    message_of(Credit),
)
# Each message with the seconds since the one before it: now and then longer than metrics'
# wait, so that missing frames are given up (the huge gaps included).
ELAPSED = st.sampled_from([0.0, 0.0, 0.1, 5.0]) | st.floats(0, 1e6)


def steps(events: st.SearchStrategy[Message]) -> st.SearchStrategy[list[tuple[Message, float]]]:
    return st.lists(st.tuples(events, ELAPSED), max_size=40)


def through_the_wire(msg: Message) -> Message:
    """``msg`` as a consumer gets it: encoded, then decoded (and so checked)."""
    return messages.decode([bytes(p) for p in messages.encode(msg)])


@FUZZ
@given(steps=steps(TO_VIEWER))
def test_the_viewer_takes_any_valid_messages_and_its_page_stays_json(steps):
    state = ViewerState(history=4)
    sent: dict[str, int] = {}
    now = 0.0
    for msg, elapsed in steps:
        now += elapsed
        for row in rows_of(through_the_wire(msg)):  # a Records record by record, as viewer.py takes it
            state.add(row)
        view = snapshot(state, now, {"frames_shown": 0})
        json.dumps(view, allow_nan=False)  # as the web page gets it: no NaN, no infinity
        json.dumps(drift_since(view["drift"], sent), allow_nan=False)
        for st_ in state.streams.values():
            ingest = state.stats.get(("ingest", st_.stream))
            overlay_texts(st_.stream, st_.metrics, 1.0, fallback_counts=ingest.counters if ingest else None)
        state.take_new_frames(now)


class RunsTable:
    """Stands in for the database's runs table (the recorder's rows go to a list)."""

    def claim_run(self, name, started_at):
        return 1

    def update_run(self, run_id, **fields):
        json.dumps(fields.get("summary"), allow_nan=False)  # jsonb takes no NaN and no infinity


class Rows(list):
    def add(self, row):
        self.append(row)

    def set_model(self, model, dim):
        pass

    def add_event(self, stream, seq, t, kind, value):
        pass


def small_jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 16), (seed % 256, 80, 160)).save(out, "JPEG")
    return out.getvalue()


JPEGS = st.binary(max_size=64) | st.integers(0, 255).map(small_jpeg)
TO_RECORDER = st.one_of(
    message_of(Frame, stream=STREAMS, seq=SEQS, jpeg=JPEGS),
    *[message_of(MetricsRecord, stream=STREAMS, seq=SEQS, vector=vectors(st.sampled_from([0, 1, 3])))] * 2,
    message_of(Records, stream=STREAMS, seq=SEQS),  # as the core sends records
    message_of(EndOfStream, stream=STREAMS),
    message_of(StreamStart, stream=STREAMS),
    message_of(Stats, stream=STREAMS),
    message_of(Credit),
)


@FUZZ
@given(msgs=st.lists(TO_RECORDER, max_size=30), stream_dirs=st.booleans())
def test_the_recorder_takes_any_valid_messages_and_leaves_a_run_that_reads_back(msgs, stream_dirs):
    with tempfile.TemporaryDirectory() as tmp:
        run = RecordedRun.claim(RunsTable(), runs_dir=tmp, run_dir=Path(tmp) / "run")
        rows = Rows()
        settings = RecorderConfig(stream_dirs=stream_dirs, snapshot_interval=0.0, embedding_interval=2)
        recorder = Recorder(run, rows, settings)
        for msg in msgs:
            for row in rows_of(through_the_wire(msg)):  # a Records record by record, as receiver.py takes it
                recorder.on_message(row)
            recorder.flush_files()
        recorder.close_files()
        summary = run.finish({"messages": dict(recorder.counters)}, recorder.stream_summaries(Counter()))
        json.loads((run.dir / "summary.json").read_text())
        assert set(summary["streams"]) == set(recorder.streams)
        seen = set()
        for row in rows:
            assert (row.stream, row.seq) not in seen  # each frame once
            seen.add((row.stream, row.seq))
            copy_values(row)  # as COPY takes it
            assert from_spool(to_spool(row)).seq == row.seq  # as the spool keeps it


PRE = Preprocessor(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

# What an ingest's session can do, in any order: the camera's frames, frames sent or not, credit
# (any amount, also huge), Welcomes and losses of the core, the stream's end.
INGEST_EVENTS = st.lists(
    st.one_of(
        st.just(("frame",)),
        st.just(("send",)),
        st.just(("unsent",)),
        st.tuples(st.just("credit"), st.integers(0, INT64_MAX)),
        st.tuples(st.just("welcome"), st.integers(0, 64)),
        st.just(("lose",)),
        st.just(("hello",)),
        st.just(("end",)),
    ),
    max_size=60,
)


@FUZZ
@given(events=INGEST_EVENTS, lossless=st.booleans())
def test_an_ingests_delivery_accounts_for_every_frame_whatever_the_core_says(events, lossless):
    d = Delivery(lossless=lossless)
    reported = 0
    for event in events:
        kind = event[0]
        if kind == "frame" and d.accepting:
            d.add(JpegFrame(b"", 1, 1, 0.0))
        elif kind == "send" and d.next() is not None:
            d.delivered()
        elif kind == "unsent" and d.next() is not None:
            d.not_delivered()
        elif kind == "credit":
            d.add_credit(event[1])
        elif kind == "welcome":
            said = d.hello()
            d.join(event[1])
            reported += said  # the core heard what the welcomed Hello said
        elif kind == "lose":
            d.lose()
        elif kind == "hello":
            d.hello()  # a Hello the core never answered
        elif kind == "end":
            d.give_up()
        assert d.credit >= 0 and (lossless or d.credit == 0)
        # Every frame read is sent, waiting, or given up; never sent twice, never sent without credit.
        assert d.read == d.sent + d.undelivered + (d.pending is not None)
    assert reported <= d.undelivered  # the core is never told of more than were given up


@FUZZ
@given(frames=st.lists(message_of(Frame, jpeg=JPEGS), max_size=8), capacity=st.integers(1, 6))
def test_an_encoder_takes_any_valid_frames_up_to_its_capacity_and_sorts_good_from_corrupt(frames, capacity):
    intake = Intake(capacity=capacity)
    intake.begin(life=1)
    taken = 0
    for frame in frames:
        received = through_the_wire(frame)
        assert isinstance(received, Frame)  # as the worker takes only frames
        taken += intake.add(received)
    assert taken == min(len(frames), capacity)  # the rest is answered "over capacity"
    held = intake.take(capacity)
    arrays, ok, bad, _ = load_batch(PRE, [h.frame.jpeg for h in held])
    assert sorted(ok + [i for i, _ in bad]) == list(range(len(held)))
    assert all(a.shape == (16, 16, 3) for a in arrays)
    intake.finish(held)
    assert len(intake) == 0


# -- what the properties found, one plain test each -------------------------------------------


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_an_embedding_of_another_length_starts_the_drift_afresh():
    """It crashed np.dot. A stream whose model changes (another worker, another model) gets
    no similarity for the first frame of the new length, as for a stream's first frame."""
    s = Streams(rolling_window=10, max_wait=1)
    s.start_epoch("cam0", 0, now=0)
    for seq, (model, vector) in enumerate([("m", unit(1, 0)), ("m2", unit(1, 0, 0)), ("m2", unit(1, 0, 0))]):
        s.numbered("cam0", seq, now=0)
        s.outcome("cam0", seq, Embedding("cam0", seq, seq / 10, "w", model, vector=vector), now=0)
    records = s.release(now=0)
    assert [(r.seq, r.similarity) for r in records if isinstance(r, MetricsRecord)] == [
        (0, None),
        (1, None),
        (2, pytest.approx(1.0)),
    ]
    assert s.streams["cam0"].drift.dim_changes == 1


def test_a_huge_jump_in_numbers_is_one_step_not_one_per_number():
    """A dropped notice with seq 10**18 made metrics count the gap out one seq at a time: it hung.
    Numbers are the core's own now; a floor raised that far (a recorder's Ready) costs nothing."""
    s = Streams(rolling_window=10, max_wait=1)
    s.start_epoch("cam0", 0, now=0)
    s.numbered("cam0", 0, now=0)
    s.outcome("cam0", 0, DROPPED, now=0)
    s.end_epoch("cam0")
    started = time.monotonic()
    s.start_epoch("cam0", 10**18, now=0)
    s.numbered("cam0", 10**18, now=0)
    s.outcome("cam0", 10**18, LOST, now=0)
    s.end_epoch("cam0")
    out = s.release(now=0) + s.release(now=2)
    assert time.monotonic() - started < 1
    eos = out[-1]
    assert isinstance(eos, EndOfStream) and eos.last_seq == 10**18
    assert (eos.counts["published"], eos.counts["lost"], eos.counts["dropped"]) == (2, 1, 1)


def test_a_gap_comes_out_as_one_lost_run():
    order = StreamOrder(0, max_wait=1)
    order.add(5, "f", now=0)
    assert order.release(now=0) == []
    assert order.release(now=1.5) == [(0, Lost(5)), (5, "f")]
    assert Lost(1) == LOST


def test_huge_vector_values_give_a_finite_similarity():
    """float32 values near their limit overflowed a float32 norm: similarity and drift were NaN,
    and the record metrics published did not decode anywhere."""
    big = np.array([3e38, 3e38], dtype=np.float32)
    assert cosine_similarity(big, big) == pytest.approx(1.0)
    tiny = np.array([1e-45, 0], dtype=np.float32)  # underflowed to a zero norm in float32
    assert cosine_similarity(tiny, tiny) == pytest.approx(1.0)


def test_frames_captured_a_moment_apart_give_a_finite_rate():
    """Capture times 5e-324 s apart made fps infinite: a record that did not decode."""
    t = DriftTracker(window=3)
    t.update(unit(1, 0), 0.0)
    t.update(unit(1, 0), 5e-324)
    assert t.fps() == 0.0


def test_the_page_totals_stay_finite_whatever_the_counters():
    """Two ingests' huge counters added up to infinity, which the page's JSON refuses."""
    state = ViewerState()
    for name in ("cam0", "cam1"):
        state.add(Frame(name, 0, 0.0, 1, 1, b""))
        state.add(Stats("ingest", name, {"published": 1.7e308}))
    view = snapshot(state, 0.0, {})
    json.dumps(view, allow_nan=False)
    assert view["totals"]["frames_in"] is None
