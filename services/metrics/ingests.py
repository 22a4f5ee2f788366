"""The cameras' side of the core: one ingest session per stream, its epochs, its captures numbered
and offered to the workers, each one's worker told back (``Assigned``), the workers' data links told
(``Workers``), previews asked for and published, and a lossless ingest's credit (docs/PROTOCOL.md,
"Ingest" and "Protocol 3"). The core holds no JPEG: an ingest sends each to its worker itself.

``Ingests`` is the ingests' role (roles.py): handed what it needs (order and counts, the
broker and a dispatch, numbering, the frames publisher), a ``send`` to a session and an
``evict`` of one; the core dispatches each ingest's Hello, message and departure to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq

from encoders.shared import zmqio
from encoders.shared.complaints import Complaints
from encoders.shared.messages import (
    MAX_BATCH,
    NO_WORKER,
    Assigned,
    Assignment,
    Captured,
    CaptureEnded,
    CaptureNote,
    Credit,
    Frame,
    Hello,
    Message,
    NoPictures,
    Pictures,
    Preview,
    Refused,
    Stats,
    Stop,
    WantPictures,
)
from encoders.shared.session import Peer

from .broker import LOSSLESS_MAX, Broker
from .clocks import Clocks
from .links import DataLinks
from .numbering import Numbering
from .previews import Watchers
from .reorder import LOST
from .report import stats_counters
from .roles import Evict, Refusal, Send
from .streams import DROPPED, Streams

log = logging.getLogger("encoders.metrics")


@dataclass
class Ingest:
    """What the core keeps of one ingest session."""

    identity: bytes
    name: str
    stream: str
    lossless: bool
    credit: int = 0  # captures granted and not yet received
    captures: int = 0  # captures numbered in this session
    ended: bool = False  # its capture ended (CaptureEnded, or the core gave up waiting for it)
    stop_sent: float | None = None  # when it was told to Stop
    ids: dict[int, int] = field(default_factory=dict)  # seq -> the ingest's id, until its worker is decided
    answers: list[Assignment] = field(default_factory=list)  # decided, to tell it (one Assigned a turn)


class Ingests:
    takes: tuple[type[Message], ...] = (Captured, CaptureEnded, Stats, Pictures, NoPictures)

    def __init__(
        self,
        streams: Streams,
        broker: Broker,
        numbering: Numbering,
        frames_pub: zmq.Socket,
        *,
        send: Send,
        dispatch: Callable[[float], None],
        evict: Evict,
        complain: Complaints,
        max_streams: int,
        max_clock_skew: float = 0.0,
        links: DataLinks | None = None,
        watchers: Watchers | None = None,
        to_recorder: Callable[[Frame | NoPictures, float], None] = lambda msg, now: None,
    ) -> None:
        """``dispatch``: the workers' (workers.py), which decides who embeds what is waiting and tells
        ``assigned``; ``links``: the data links (links.py); ``watchers``: the frames publisher's
        subscriptions (previews.py); ``to_recorder``: a picture the recorder asked for (a snapshot), or
        those the ingest no longer has."""
        self.streams, self.broker, self.numbering, self.frames_pub = streams, broker, numbering, frames_pub
        self.links = links if links is not None else DataLinks()
        self.watchers = watchers if watchers is not None else Watchers(0.0)
        self.to_recorder = to_recorder
        self.send, self.dispatch, self.evict, self.complain = send, dispatch, evict, complain
        self.stopping = False  # the pipeline drains (stop_all): no ingest is taken any more
        self.max_streams = max_streams
        self.live: dict[bytes, Ingest] = {}  # identity -> its ingest session
        self.of: dict[str, bytes] = {}  # stream -> the identity of its live session
        self.streams_refused = 0
        self.clocks = Clocks(complain, max_clock_skew)  # each capture's time against the core's clock
        # The links each ingest was last told (worker number -> address and key), and the ingests whose
        # links are to be worked out again (links.py: with keys, each ingest's own).
        self._told_links: dict[bytes, dict[str, Any]] = {}
        self._links_due: set[bytes] = set()
        # Captures each ended session had numbered, by identity: the session's next Hello says how
        # many it sent, and the difference never arrived (bounded: the oldest are forgotten).
        self.gone: dict[bytes, int] = {}

    # -- sessions ----------------------------------------------------------------------------------

    def refusal(self, identity: bytes, hello: Hello, now: float) -> Refusal:
        """Why this Hello cannot be taken now (the ingest may try again later), or None; an ingest that
        has the stream it claims is ended."""
        assert hello.stream is not None  # hello_problem checked
        if self.stopping:
            return "the core is stopping", True
        if hello.stream not in self.of and len(self.of) >= self.max_streams:
            self.streams_refused += 1
            return f"{self.max_streams} streams already (ENCODERS_MAX_STREAMS)", True
        holder = self.holder(hello, identity)
        if holder is not None:
            # Two ingests claim one camera: the newest works, the other is refused for good.
            log.warning(
                "ingest %s claims stream %s, which ingest %s had: the new one replaces it (two ingests of "
                "one camera is a mistake to fix)",
                hello.name,
                hello.stream,
                self.live[holder].name,
            )
            self.evict(
                holder,
                Refused(f"stream {hello.stream} was taken by another ingest ({hello.name})"),
                f"replaced by {hello.name}",
                now,
            )
        return None

    def holder(self, hello: Hello, identity: bytes) -> bytes | None:
        """Another session that has the stream this Hello claims, if any (the new one replaces it)."""
        assert hello.stream is not None
        holder = self.of.get(hello.stream)
        return holder if holder != identity else None

    def join(self, peer: Peer, hello: Hello, now: float) -> Mapping[str, Any]:
        """A new epoch of the ingest's stream; its Welcome says the credit it starts with (lossless)."""
        assert hello.stream is not None  # hello_problem checked
        identity = peer.identity
        ingest = Ingest(identity, hello.name, hello.stream, hello.lossless)
        self.live[identity] = ingest
        key = peer.state.get("key")
        self.links.add_ingest(identity, key.key.decode("ascii") if key is not None else "", hello.name, hello.stream)
        self.watchers.forget(hello.stream)
        self._told_links.pop(identity, None)
        self._links_due.add(identity)
        self.of[hello.stream] = identity
        first = self.numbering.peek(hello.stream)
        # Captures its last session sent that never arrived (queued in a connection that died):
        # counted lost here when that session was with this life of the core; with an earlier
        # life (the core restarted) only the recorder can tell, from what that life recorded.
        in_transit, previous = 0, ("", 0)
        if hello.after and hello.after == self.streams.core:
            in_transit = max(0, hello.sent - self.gone.pop(identity, hello.sent))
        elif hello.after:
            previous = (hello.after, hello.sent)
        self.streams.start_epoch(
            hello.stream,
            first,
            now,
            url=hello.url,
            undelivered=hello.undelivered,
            in_transit=in_transit,
            previous=previous,
        )
        log.info(
            "ingest %s joined: stream %s from %d%s%s%s",
            hello.name,
            hello.stream,
            first,
            " (lossless)" if hello.lossless else "",
            f", {hello.undelivered} captures undelivered meanwhile (dropped)" if hello.undelivered else "",
            f", {in_transit} captures sent that never arrived (lost)" if in_transit else "",
        )
        if hello.lossless:
            ingest.credit = max(0, self.broker.lossless_limit() - self.broker.queued(hello.stream))
        return {"credit": ingest.credit}

    def leave(self, peer: Peer, why: str, now: float) -> None:
        """The session's life is over: its epoch ends (frames numbered still get their outcomes)."""
        identity = peer.identity
        ingest = self.live.pop(identity, None)
        if ingest is None:
            return
        self.gone[identity] = ingest.captures
        self.links.remove_ingest(identity)
        # Its captures still waiting for a worker: their pictures went with it. Dropped (no worker had room).
        for frame in self.broker.take_waiting(ingest.stream, set(ingest.ids)):
            self.streams.outcome(frame.stream, frame.seq, DROPPED, now)
        # Those assigned that it was not told of yet: their pictures will never reach their workers. Lost.
        for answer in ingest.answers:
            worker = self.links.by_number.get(answer.worker) if answer.worker else None
            if worker is not None:
                self.broker.forget(worker, (ingest.stream, answer.seq))
                self.streams.outcome(ingest.stream, answer.seq, LOST, now)
        self._told_links.pop(identity, None)
        self._links_due.discard(identity)
        if len(self.gone) > 4 * self.max_streams:
            del self.gone[next(iter(self.gone))]
        if self.of.get(ingest.stream) == identity:
            del self.of[ingest.stream]
            self.clocks.leave(ingest.stream)
        if not ingest.ended:
            self.streams.end_epoch(ingest.stream)
        log.info("ingest %s of stream %s left: %s", ingest.name, ingest.stream, why)

    def stop_all(self, now: float) -> None:
        """Tell every ingest to end its capture (a drain); no ingest is taken from now on."""
        self.stopping = True
        for ingest in self.live.values():
            ingest.stop_sent = now
            self.send(ingest.identity, Stop("the pipeline is stopping"), now)

    def end_for(self, stream: str) -> None:
        """End an epoch its ingest did not end when told to (its later captures are refused)."""
        for ingest in [i for i in self.open() if i.stream == stream]:
            log.warning("stream %s: its ingest did not end its capture when told to stop: ended here", ingest.stream)
            ingest.ended = True
            self.streams.end_epoch(ingest.stream)

    # -- messages ----------------------------------------------------------------------------------

    def take(self, peer: Peer, msg: Message, now: float) -> None:
        assert isinstance(msg, Captured | CaptureEnded | Stats | Pictures | NoPictures)  # only ``takes``
        ingest = self.live[peer.identity]
        if isinstance(msg, Stats):
            self._stats(ingest, msg)
        elif isinstance(msg, Pictures):
            self._pictures(ingest, msg, now)
        elif isinstance(msg, NoPictures):
            if msg.stream == ingest.stream:
                self.to_recorder(msg, now)
            else:
                self.complain(
                    "pictures_of_another_stream", "ingest %s said pictures of %s are gone", ingest.name, msg.stream
                )
        elif ingest.ended:
            self.complain("after_capture_ended", "a %s from ingest %s after its capture ended", msg.KIND, ingest.name)
        elif isinstance(msg, CaptureEnded):
            ingest.ended = True
            self.streams.end_epoch(ingest.stream, msg.counts)
            log.info("stream %s: capture ended (%s)", ingest.stream, msg.reason or "no reason given")
        else:
            for note in msg.rows():
                self._capture(ingest, note, now)

    def _capture(self, ingest: Ingest, cap: CaptureNote, now: float) -> None:
        lossless = ingest.lossless
        if lossless:
            if ingest.credit > 0:
                ingest.credit -= 1
            else:
                self.complain("captures_without_credit", "ingest %s sent a capture without credit", ingest.name)
                lossless = self.broker.queued(ingest.stream) < 2 * LOSSLESS_MAX  # bounded, whatever it sends
        self.clocks.capture(ingest.stream, cap.t_capture, now, lossless=ingest.lossless)
        seq = self.numbering.take(ingest.stream)
        ingest.captures += 1
        self.streams.numbered(ingest.stream, seq, now)
        ingest.ids[seq] = cap.id
        # What the broker keeps of a frame: no JPEG (the ingest holds it until told whose it is).
        frame = Frame(ingest.stream, seq, cap.t_capture, cap.width, cap.height)
        displaced = self.broker.offer(frame, lossless)
        if displaced is not None:
            self.streams.outcome(displaced.stream, displaced.seq, DROPPED, now)
            self.assigned(displaced.stream, displaced.seq, NO_WORKER)
        self.dispatch(now)  # at once: a burst of captures must not displace frames a worker has room for

    def assigned(self, stream: str, seq: int, worker: int) -> bool:
        """A frame's worker is decided (NO_WORKER: dropped): its ingest is told in this turn's Assigned.
        False if no ingest holds it any more (its session ended): its picture will never come."""
        identity = self.of.get(stream)
        ingest = self.live.get(identity) if identity is not None else None
        frame_id = ingest.ids.pop(seq, None) if ingest is not None else None
        if ingest is None or frame_id is None:
            return False
        ingest.answers.append(Assignment(frame_id, seq, worker))
        return True

    def _pictures(self, ingest: Ingest, msg: Pictures, now: float) -> None:
        """Pictures from an ingest: previews, published on the frames publisher (a PUB never blocks: a
        slow viewer misses frames), or those the recorder asked for (its snapshots)."""
        if msg.stream != ingest.stream:
            self.complain("pictures_of_another_stream", "ingest %s sent pictures of %s", ingest.name, msg.stream)
            return
        for frame in msg.frames():
            if msg.preview:
                zmqio.send(self.frames_pub, frame, topic=True)
            else:
                self.to_recorder(frame, now)

    def want_pictures(self, msg: WantPictures, now: float) -> bool:
        """The recorder wants these pictures (snapshots): asked of the stream's ingest. False if none has it."""
        identity = self.of.get(msg.stream)
        return identity is not None and self.send(identity, msg, now)

    def _stats(self, ingest: Ingest, msg: Stats) -> None:
        if msg.stream != ingest.stream:
            self.complain("stats_of_another_stream", "ingest %s sent Stats of %s", ingest.name, msg.stream)
            return
        # Republished as ingests once published them (viewers read them), with what only the core knows now.
        core_view = {
            "workers": len(self.broker.workers),
            "workers_free": self.broker.capacity - self.broker.in_use,  # frames the workers could take now
            "pending": self.broker.queued(ingest.stream),
        }
        counters = stats_counters(core_view, msg.counters, core_view)
        zmqio.send(self.frames_pub, Stats(msg.service, ingest.stream, counters, msg.t), topic=True)

    def tick(self, now: float) -> None:
        self.grant_credits(now)
        self.tell(now)

    def tell(self, now: float) -> None:
        """What each ingest is to hear this turn: the data links of the workers it may reach when they
        changed (before any assignment to a new worker: with keys, a worker is named once it admits the
        ingest's key), the preview rate when someone started or stopped watching, and every decision
        since the last turn in one Assigned (held while its links could not be told)."""
        if self.links.links_changed:
            self.links.links_changed = False
            self._links_due.update(self.live)
        for identity in list(self._links_due):
            links = self.links.links(identity)
            if self._told_links.get(identity) == links.links:
                self._links_due.discard(identity)
            elif self.send(identity, links, now):
                self._told_links[identity] = links.links
                self._links_due.discard(identity)
        for stream, fps in self.watchers.wanted(self.of).items():
            if not self.send(self.of[stream], Preview(fps), now):
                self.watchers.forget(stream)  # told again next turn
        for ingest in self.live.values():
            if ingest.answers and ingest.identity not in self._links_due:
                answers, ingest.answers = ingest.answers, []
                for start in range(0, len(answers), MAX_BATCH):
                    self.send(ingest.identity, Assigned.of(answers[start : start + MAX_BATCH]), now)

    def grant_credits(self, now: float) -> None:
        """Lossless ingests get credit as their frames leave the queue (bounded by lossless_limit), a quarter
        of the limit at a time: one Credit per frame (as it was) was a message a frame. Granted late by
        less than a quarter, an ingest that waits for credit has three quarters of the limit queued here."""
        limit = self.broker.lossless_limit()
        least = max(1, limit // 4)
        for ingest in self.live.values():
            if ingest.lossless and not ingest.ended:
                n = limit - self.broker.queued(ingest.stream) - ingest.credit
                if n >= least and self.send(ingest.identity, Credit(n), now):
                    ingest.credit += n

    def open(self) -> list[Ingest]:
        """Ingests whose capture has not ended."""
        return [i for i in self.live.values() if not i.ended]
