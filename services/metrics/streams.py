"""Per-stream bookkeeping of the core, without sockets: numbered frames, their outcomes in order,
epochs, drift, counts, and what to publish (docs/PROTOCOL.md, "Order, loss and drift").

The core tells ``Streams`` what happened (an epoch started or ended, a frame was numbered, a
frame's outcome); ``release(now)`` hands back, per stream and in order, the messages to
publish: ``StreamStart`` where an epoch starts, a ``MetricsRecord`` per embedded frame,
``EndOfStream`` once every frame of an ended epoch has its outcome.

Epochs: each ingest Hello starts one (``start_epoch``). Numbers go on across epochs, so the
reorder state is never reset (frames of the old epoch still in a worker's hands come back and
are released in order); instead the epoch's start is an event at ``first_seq``, released
before the outcome at that seq, and drift starts afresh there: the first embedded frame at or
after ``first_seq`` has no similarity.

Counts are per stream for this life of the core, across its epochs (records carry them with
the core's life, and a recorder adds each life's last ones). ``published`` is every frame
numbered plus the captures an ingest could not deliver while the core was away (its Hello's
``undelivered``, and its CaptureEnded's ``dropped``: what it gave up or its sampling left out
since), which count as dropped: published = embedded + dropped + skipped + lost
once every frame has its outcome; ``late`` counts results that came after their frame was
given up.

Ended streams are forgotten (``forget_settled``): once a stream's epoch has ended and every
frame and event of it is released, its order, drift and alerts go, and only its counts, its
next number and its last capture time stay (``Ended``: a few numbers a name, as numbering.py
keeps a high-water mark per name). A core that sees many short-lived streams so keeps little
per stream it ever saw, and a stream that comes back in this life goes on counting from where
it was (a recorder adds each life's last counts: they must never go back).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from encoders.shared.messages import Embedding, EndOfStream, FrameCounts, MetricsRecord, Skipped, StreamStart

from .alerts import AlertRules, Alerts, stream_back
from .drift import DriftTracker, consecutive_similarities
from .reorder import LOST, Lost, StreamOrder, Unused
from .scenes import SceneRule


@dataclass(frozen=True)
class Dropped:
    """A frame the core dropped: a newer capture of its stream displaced it while no worker was free."""


DROPPED = Dropped()
Outcome = Embedding | Skipped | Dropped | Lost
Released = StreamStart | MetricsRecord | EndOfStream
# Embedded frames of a stream released together from which their similarities are computed as one
# (drift.consecutive_similarities): below it, pair by pair costs less. Measured (512 values, a 2-core
# AMD EPYC): 12 us for the run's numpy whatever its length, against 3.3 us a frame pair by pair; at 64
# frames 0.8 us a frame.
VECTORISE_FROM = 6
# What an ingest's end of capture may add to the stream's totals (its camera's own counts).
CAMERA_COUNTS = ("corrupt", "reconnects", "truncated")


def zero_counts() -> FrameCounts:
    return FrameCounts(published=0, embedded=0, dropped=0, skipped=0, lost=0, late=0)


@dataclass
class Epoch:
    """An event at a position of the stream's numbers: released once the order reaches it."""

    kind: Literal["start", "end"]
    seq: int  # start: the epoch's first_seq; end: its last_seq
    url: str = ""
    previous: tuple[str, int] = ("", 0)  # start: an earlier life of the core, the captures sent to it


@dataclass
class StreamState:
    order: StreamOrder
    drift: DriftTracker
    next_number: int  # the seq the next numbered frame should have (a jump past it: Unused)
    counts: FrameCounts = field(default_factory=zero_counts)
    alerts: Alerts = field(default_factory=lambda: Alerts(AlertRules()))  # reset with drift at each epoch
    last_capture: float | None = None  # the last record's capture time, across epochs (stream_back)
    events: deque[Epoch] = field(default_factory=deque)
    open: Epoch | None = None  # the epoch started and not yet ended


@dataclass
class Ended:
    """What is kept of a stream forgotten once it ended and settled: what a new epoch of it goes on from."""

    counts: FrameCounts
    late: int
    next_number: int
    last_capture: float | None


class Streams:
    """Every stream's order, drift and counts; hands back what to publish, in order."""

    def __init__(
        self,
        rolling_window: int,
        max_wait: float,
        scenes: SceneRule | None = None,
        *,
        max_pending: int = 10_000,
        core: str = "",
        alerts: AlertRules | None = None,
    ) -> None:
        self.rolling_window, self.max_wait, self.max_pending = rolling_window, max_wait, max_pending
        self.scenes = scenes or SceneRule()  # default: both rules off
        self.alert_rules = alerts or AlertRules()  # default: off
        self.core = core  # this life of the core, carried by every record
        self.streams: dict[str, StreamState] = {}
        self.ended: dict[str, Ended] = {}  # streams forgotten (forget_settled), by name

    @classmethod
    def from_config(cls, cfg: Any, core: str) -> Streams:
        """The core's streams, as its settings say (``core``: this life of the core)."""
        return cls(
            cfg.rolling_window,
            cfg.max_wait,
            SceneRule.from_config(cfg),
            max_pending=cfg.max_pending,
            core=core,
            alerts=AlertRules.from_config(cfg),
        )

    # -- what happened --------------------------------------------------------------------------

    def start_epoch(
        self,
        stream: str,
        first_seq: int,
        now: float,
        *,
        url: str = "",
        undelivered: int = 0,
        in_transit: int = 0,
        previous: tuple[str, int] = ("", 0),
    ) -> None:
        """An ingest's Hello: a new epoch from ``first_seq`` (ending the open one, if any).

        ``undelivered``: frames the ingest read and could not send (dropped); ``in_transit``:
        captures it sent that never arrived (lost); ``previous``: the life of the core its last
        session was with, if another, and the captures it sent there (for the recorder)."""
        state = self.streams.get(stream)
        if state is None:
            kept = self.ended.pop(stream, None)
            if kept is not None:  # a stream forgotten in this life comes back: it goes on from there
                first_seq = max(first_seq, kept.next_number)
            order = StreamOrder(first_seq, self.max_wait, self.max_pending)
            state = StreamState(order, self._tracker(), first_seq, alerts=Alerts(self.alert_rules))
            if kept is not None:
                state.counts, state.order.late, state.last_capture = kept.counts, kept.late, kept.last_capture
            self.streams[stream] = state
        elif state.open is not None:
            self.end_epoch(stream)
        first_seq = max(first_seq, state.next_number)  # numbers only go up
        self._numbers_skipped(state, first_seq, now)
        state.open = Epoch("start", first_seq, url, previous)
        state.events.append(state.open)
        # What the ingest read while the core was away never got a number: dropped, counted;
        # what it sent that never arrived: lost, counted.
        state.counts["published"] = (state.counts["published"] or 0) + undelivered + in_transit
        state.counts["dropped"] += undelivered
        state.counts["lost"] += in_transit

    def end_epoch(self, stream: str, camera: FrameCounts | None = None) -> None:
        """The epoch's last frame is numbered (its ingest ended its capture, left, or was replaced)."""
        state = self.streams.get(stream)
        if state is None or state.open is None:
            return
        state.open = None
        # The last number handed out (an epoch that numbered nothing: the one before its first).
        state.events.append(Epoch("end", state.next_number - 1))
        # TypedDicts, to mypy: keys from a loop are not the literals it wants.
        counts, said = cast(dict, state.counts), cast(dict, camera or {})
        for key in CAMERA_COUNTS:  # the ingest's own counts of its camera, as it last said them
            if key in said:
                counts[key] = said[key]
        # Frames the ingest gave up or left out (sampling) since its last Hello: dropped, as a Hello's
        # undelivered are (docs/PROTOCOL.md, "Counts").
        dropped = said.get("dropped") or 0
        counts["published"] = (counts["published"] or 0) + dropped
        counts["dropped"] += dropped

    def numbered(self, stream: str, seq: int, now: float) -> None:
        """A frame of ``stream`` got ``seq`` (from the core's numbering, never lower than before)."""
        state = self.streams[stream]
        self._numbers_skipped(state, seq, now)
        state.next_number = seq + 1
        state.counts["published"] = (state.counts["published"] or 0) + 1

    def outcome(self, stream: str, seq: int, outcome: Outcome, now: float) -> bool:
        """A numbered frame's outcome; False if it came too late (counted late, for results)."""
        state = self.streams.get(stream)
        if state is None:
            kept = self.ended.get(stream)
            if kept is not None and isinstance(outcome, Embedding | Skipped):
                kept.late += 1  # a worker's result for a frame given up before the stream was forgotten
            return False
        if isinstance(outcome, Lost) and seq < state.order.next_seq:
            return False  # the core giving up a frame the order gave up already: no result, not late
        return state.order.add(seq, outcome, now)

    # -- what to publish ------------------------------------------------------------------------

    def release(self, now: float) -> list[Released]:
        """Every stream's messages now due, each stream in order."""
        out: list[Released] = []
        for name, state in self.streams.items():
            released = state.order.release(now)
            known = self._similarities(released)
            for seq, outcome in released:
                self._events_before(name, state, seq, out)
                if isinstance(outcome, Lost):
                    state.counts["lost"] += outcome.n
                elif isinstance(outcome, Embedding):
                    state.counts["embedded"] += 1
                    out.append(self._record(state, outcome, known.get(id(outcome))))
                elif isinstance(outcome, Skipped):
                    state.counts["skipped"] += 1
                elif isinstance(outcome, Dropped):
                    state.counts["dropped"] += 1
            self._events_before(name, state, state.order.next_seq, out)
        return out

    def totals(self, name: str) -> FrameCounts:
        state = self.streams.get(name)
        if state is None:  # forgotten
            kept = self.ended[name]
            return {**kept.counts, "late": kept.late}
        return {**state.counts, "late": state.order.late}

    def names(self) -> list[str]:
        """Every stream of this life of the core: those with state, then those forgotten."""
        return [*self.streams, *self.ended]

    def settled(self, name: str) -> bool:
        """No epoch open, every numbered frame's outcome and every event released."""
        state = self.streams.get(name)
        if state is None:
            return name in self.ended
        return state.open is None and not state.events and state.order.next_seq >= state.next_number

    def forget_settled(self) -> list[str]:
        """Let go of every stream that has ended and settled (its ingest may still be saying Bye):
        only what a new epoch of it goes on from is kept (``Ended``). The names forgotten."""
        gone = [name for name in self.streams if self.settled(name)]
        for name in gone:
            state = self.streams.pop(name)
            self.ended[name] = Ended(state.counts, state.order.late, state.next_number, state.last_capture)
        return gone

    def give_up_unowned(self, now: float) -> dict[str, list[int]]:
        """Every ended epoch's numbered frames without an outcome, given up as lost (a drain's last resort,
        when nothing is left to bring them: stopping.py); the seqs, by stream."""
        out: dict[str, list[int]] = {}
        for name, state in self.streams.items():
            if state.open is not None:
                continue
            missing = [s for s in range(state.order.next_seq, state.next_number) if s not in state.order.pending]
            for seq in missing:
                state.order.add(seq, LOST, now)
            if missing:
                out[name] = missing
        return out

    def unsettled(self) -> list[str]:
        return [name for name in self.streams if not self.settled(name)]

    def waiting(self, name: str) -> int:
        """Outcomes held back by a missing one."""
        state = self.streams.get(name)
        return state.order.waiting() if state is not None else 0

    # -- internals ------------------------------------------------------------------------------

    def _tracker(self) -> DriftTracker:
        return DriftTracker(self.rolling_window)

    def _numbers_skipped(self, state: StreamState, seq: int, now: float) -> None:
        """Numbers below ``seq`` that no frame was given (a raised floor) are filled as Unused."""
        if seq > state.next_number:
            state.order.add(state.next_number, Unused(seq - state.next_number), now)
            state.next_number = seq

    def _events_before(self, name: str, state: StreamState, seq: int, out: list[Released]) -> None:
        """Release the epoch events due before the outcome at ``seq`` (or, at the end, the order's next)."""
        while state.events:
            event = state.events[0]
            if (event.kind == "start" and event.seq > seq) or (event.kind == "end" and event.seq >= seq):
                return
            state.events.popleft()
            if event.kind == "start":
                state.drift = self._tracker()  # drift is never computed across an epoch's start
                state.alerts = Alerts(self.alert_rules)
                core, sent = event.previous
                out.append(StreamStart(name, event.seq, event.url, previous_core=core, previous_sent=sent))
            else:
                out.append(EndOfStream(name, event.seq, self.totals(name)))

    @staticmethod
    def _similarities(released: list[tuple[int, Any]]) -> dict[int, tuple[Any, float | None]]:
        """A run's embedded frames' similarities in one go, each with the vector before it in the run
        (the tracker takes one where that is its previous: not across an epoch's start), by id() of
        the Embedding; none for a run too short to gain by it."""
        if len(released) < VECTORISE_FROM:  # the common case at a camera's rate: a frame or two a turn
            return {}
        embedded = [o for _, o in released if isinstance(o, Embedding)]
        if len(embedded) < VECTORISE_FROM:
            return {}
        sims = consecutive_similarities([e.vector for e in embedded])
        return {id(e): (embedded[i - 1].vector, sims[i]) for i, e in enumerate(embedded) if i}

    def _record(self, state: StreamState, emb: Embedding, known: tuple[Any, float | None] | None) -> MetricsRecord:
        before = state.drift.rolling()  # the window the frame's drift is judged against excludes it
        similarity, drift = state.drift.update(emb.vector, emb.t_capture, known)
        events = state.alerts.on_record(emb.t_capture, drift, emb.contrast, emb.vector, emb.model)
        events.update(stream_back(self.alert_rules, state.last_capture, emb.t_capture))
        state.last_capture = max(emb.t_capture, state.last_capture or 0.0)
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
            counts=self.totals(emb.stream),
            scene_change=self.scenes.is_change(drift, before),
            t_metrics=time.time(),
            core=self.core,
            vector=emb.vector,
            thumbnail=emb.thumbnail,
            brightness=emb.brightness,
            contrast=emb.contrast,
            events=events,
        )
