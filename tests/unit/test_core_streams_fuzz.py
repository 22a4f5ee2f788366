"""The core's stream bookkeeping under any order of events (property-based): what it publishes always
decodes, each stream's records come in order, and once every frame has an outcome the counts add up.

Events are what the core tells ``Streams``: an epoch starts (sometimes above a raised floor) or
ends, a frame is numbered, an outcome comes (any kind, any order, duplicates and results for
frames already given up included); time moves on, now and then past max_wait.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from encoders.services.metrics.reorder import LOST
from encoders.services.metrics.streams import DROPPED, Streams
from encoders.shared import messages
from encoders.shared.messages import Embedding, EndOfStream, Message, MetricsRecord, Skipped, StreamStart

from .message_strategies import assert_conforms

STREAMS = st.sampled_from(["cam0", "cam1"])
EVENTS = st.one_of(
    st.tuples(st.just("start"), STREAMS, st.sampled_from([0, 0, 0, 5, 10**6])),  # a floor jump now and then
    st.tuples(st.just("end"), STREAMS, st.just(0)),
    *[st.tuples(st.just("number"), STREAMS, st.just(0))] * 3,
    *[st.tuples(st.just("outcome"), STREAMS, st.integers(0, 12))] * 3,  # which of the numbered frames
    st.tuples(st.just("wait"), st.just(""), st.sampled_from([0, 1, 20])),
    st.tuples(st.just("forget"), st.just(""), st.just(0)),  # as the core does after each release
)


def through_the_wire(msg: Message) -> Message:
    return messages.decode([bytes(p) for p in messages.encode(msg)])


def an_outcome(stream: str, seq: int, pick: int) -> Any:
    kinds = [
        lambda: Embedding(stream, seq, float(seq), "w", "m", vector=np.array([1.0, pick % 3], np.float32)),
        lambda: Skipped(stream, seq, "w", "corrupt"),
        lambda: DROPPED,
        lambda: LOST,
    ]
    return kinds[pick % 4]()


@settings(deadline=None)
@given(events=st.lists(EVENTS, max_size=60))
def test_whatever_happens_the_streams_publish_valid_messages_in_order_and_their_counts_add_up(events):
    s = Streams(rolling_window=3, max_wait=10, max_pending=5)
    now = 0.0
    numbered: dict[str, list[int]] = {"cam0": [], "cam1": []}
    open_epoch: dict[str, bool] = {"cam0": False, "cam1": False}
    out: list[Message] = []
    for kind, stream, arg in events:
        if kind == "start":
            first = max(arg, s.streams[stream].next_number if stream in s.streams else 0)
            s.start_epoch(stream, first, now)
            open_epoch[stream] = True
        elif kind == "end":
            s.end_epoch(stream)
            open_epoch[stream] = False
        elif kind == "number" and open_epoch[stream]:
            seq = s.streams[stream].next_number
            s.numbered(stream, seq, now)
            numbered[stream].append(seq)
        elif kind == "outcome" and numbered[stream]:
            seq = numbered[stream][arg % len(numbered[stream])]
            s.outcome(stream, seq, an_outcome(stream, seq, arg), now)
        elif kind == "wait":
            now += arg
        elif kind == "forget":
            s.forget_settled()
        out += s.release(now)
    for stream, seqs in numbered.items():  # every frame gets an outcome in the end; every epoch ends
        for seq in seqs:
            s.outcome(stream, seq, LOST, now)
        if stream in s.streams:
            s.end_epoch(stream)
    out += s.release(now)
    for msg in out:
        assert_conforms(through_the_wire(msg))
    s.forget_settled()
    assert not s.streams  # every stream ended and settled: forgotten, its counts kept
    for stream in s.names():
        mine = [m for m in out if m.stream == stream]  # type: ignore[attr-defined]
        seqs = [m.seq for m in mine if isinstance(m, MetricsRecord)]
        assert seqs == sorted(set(seqs))
        starts = sum(isinstance(m, StreamStart) for m in mine)
        ends = [m for m in mine if isinstance(m, EndOfStream)]
        assert starts == len(ends) and isinstance(mine[-1], EndOfStream)
        c = ends[-1].counts
        assert c["published"] == len(numbered[stream])
        assert c["embedded"] + c["dropped"] + c["skipped"] + c["lost"] == c["published"]
        assert c["embedded"] == len(seqs)
        assert s.settled(stream)
