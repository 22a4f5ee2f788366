"""Per-stream bookkeeping of the metrics service: order, drift and counts, without sockets."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from encoders.shared.messages import (
    Dropped,
    Embedding,
    EndOfStream,
    FrameCounts,
    Message,
    MetricsRecord,
    Skipped,
    StreamStart,
)

from .drift import DriftTracker
from .reorder import Lost, StreamOrder
from .scenes import SceneRule

OUTCOME_COUNTER: dict[type, Literal["embedded", "dropped", "skipped"]] = {
    Embedding: "embedded",
    Dropped: "dropped",
    Skipped: "skipped",
}


@dataclass
class StreamState:
    order: StreamOrder
    drift: DriftTracker
    counts: FrameCounts = field(default_factory=lambda: FrameCounts(embedded=0, dropped=0, skipped=0, lost=0))
    published: int | None = None  # from ingest's end-of-stream
    eos_sent: bool = False


class Streams:
    """Feeds every incoming message to its stream; hands back what to publish, in order."""

    def __init__(self, rolling_window: int, max_wait: float, scenes: SceneRule | None = None):
        self.rolling_window = rolling_window
        self.max_wait = max_wait
        self.scenes = scenes or SceneRule()  # default: both rules off
        self.streams: dict[str, StreamState] = {}

    def _state(self, stream: str) -> StreamState:
        if stream not in self.streams:
            self.streams[stream] = StreamState(StreamOrder(self.max_wait), DriftTracker(self.rolling_window))
        return self.streams[stream]

    def accept(self, msg: Message, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if isinstance(msg, StreamStart):
            known = self.streams.get(msg.stream)
            if known is not None and known.order.next_seq is not None:
                # Ingest restarted this stream: numbering starts again, so does everything else.
                del self.streams[msg.stream]
            self._state(msg.stream).order.start(msg.first_seq)
        elif isinstance(msg, (Embedding, Dropped, Skipped)):
            self._state(msg.stream).order.add(msg.seq, msg, now)
        elif isinstance(msg, EndOfStream):
            state = self._state(msg.stream)
            state.published = msg.counts.get("published", msg.last_seq + 1)
            state.order.end(msg.last_seq, now)

    def release(self, now: float | None = None) -> list[MetricsRecord | EndOfStream]:
        """Records for every outcome now in order, then an EndOfStream for each finished stream."""
        now = time.time() if now is None else now
        out: list[MetricsRecord | EndOfStream] = []
        for name, state in self.streams.items():
            for _seq, outcome in state.order.release(now):
                if isinstance(outcome, Lost):
                    state.counts["lost"] += outcome.n
                    continue
                state.counts[OUTCOME_COUNTER[type(outcome)]] += 1
                if isinstance(outcome, Embedding):
                    out.append(self._record(state, outcome))
            if state.order.finished() and not state.eos_sent:
                state.eos_sent = True
                assert state.order.last_seq is not None  # finished: the end is known
                out.append(EndOfStream(name, state.order.last_seq, self.totals(name)))
        return out

    def _record(self, state: StreamState, emb: Embedding) -> MetricsRecord:
        before = state.drift.rolling()  # the window the frame's drift is judged against excludes it
        similarity, drift = state.drift.update(emb.vector, emb.t_capture)
        return MetricsRecord(
            stream=emb.stream,
            seq=emb.seq,
            t_capture=emb.t_capture,
            t_encoded=emb.t_encoded,
            worker=emb.worker,
            model=emb.model,
            similarity=similarity,
            drift=drift,
            rolling=state.drift.rolling(),
            fps=state.drift.fps(),
            counts=state.counts.copy(),
            vector=emb.vector,
            scene_change=self.scenes.is_change(drift, before),
        )

    def totals(self, name: str) -> FrameCounts:
        state = self.streams[name]
        return {**state.counts, "late": state.order.late, "published": state.published}

    def ended(self) -> int:
        return sum(s.eos_sent for s in self.streams.values())
