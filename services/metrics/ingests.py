"""The cameras' side of the core: one ingest session per stream, its epochs, its captures numbered,
published and offered to the workers, and a lossless ingest's credit (docs/PROTOCOL.md, "Ingest").

``Ingests`` is handed the core's parts it needs (order and counts, dispatch, numbering, the
frames publisher) and a ``send`` to a session; the core calls it for each ingest's Hello,
message and departure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from encoders.shared import zmqio
from encoders.shared.complaints import Complaints
from encoders.shared.messages import Capture, CaptureEnded, Credit, Frame, Hello, Message, Stats, Stop

from .broker import LOSSLESS_MAX, Broker
from .clocks import Clocks
from .numbering import Numbering
from .report import stats_counters
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


class Ingests:
    def __init__(
        self,
        streams: Streams,
        broker: Broker,
        numbering: Numbering,
        frames_pub: zmq.Socket,
        *,
        send: Callable[[bytes, Message, float], bool],
        dispatch: Callable[[float], None],
        complain: Complaints,
        max_streams: int,
        max_clock_skew: float = 0.0,
    ) -> None:
        self.streams, self.broker, self.numbering, self.frames_pub = streams, broker, numbering, frames_pub
        self.send, self.dispatch, self.complain = send, dispatch, complain
        self.max_streams = max_streams
        self.live: dict[bytes, Ingest] = {}  # identity -> its ingest session
        self.of: dict[str, bytes] = {}  # stream -> the identity of its live session
        self.streams_refused = 0
        self.clocks = Clocks(complain, max_clock_skew)  # each capture's time against the core's clock
        # Captures each ended session had numbered, by identity: the session's next Hello says how
        # many it sent, and the difference never arrived (bounded: the oldest are forgotten).
        self.gone: dict[bytes, int] = {}

    # -- sessions ----------------------------------------------------------------------------------

    def refusal(self, identity: bytes, hello: Hello) -> str | None:
        """Why this Hello cannot be taken now (the ingest may try again later), or None."""
        assert hello.stream is not None  # hello_problem checked
        if hello.stream not in self.of and len(self.of) >= self.max_streams:
            self.streams_refused += 1
            return f"{self.max_streams} streams already (ENCODERS_MAX_STREAMS)"
        return None

    def holder(self, hello: Hello, identity: bytes) -> bytes | None:
        """Another session that has the stream this Hello claims, if any (the new one replaces it)."""
        assert hello.stream is not None
        holder = self.of.get(hello.stream)
        return holder if holder != identity else None

    def join(self, identity: bytes, hello: Hello, now: float) -> int:
        """A new epoch of the ingest's stream; the credit it starts with (lossless)."""
        assert hello.stream is not None  # hello_problem checked
        ingest = Ingest(identity, hello.name, hello.stream, hello.lossless)
        self.live[identity] = ingest
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
        return ingest.credit

    def leave(self, identity: bytes, why: str) -> None:
        """The session's life is over: its epoch ends (frames numbered still get their outcomes)."""
        ingest = self.live.pop(identity, None)
        if ingest is None:
            return
        self.gone[identity] = ingest.captures
        if len(self.gone) > 4 * self.max_streams:
            del self.gone[next(iter(self.gone))]
        if self.of.get(ingest.stream) == identity:
            del self.of[ingest.stream]
            self.clocks.leave(ingest.stream)
        if not ingest.ended:
            self.streams.end_epoch(ingest.stream)
        log.info("ingest %s of stream %s left: %s", ingest.name, ingest.stream, why)

    def stop_all(self, now: float) -> None:
        """Tell every ingest to end its capture (a drain)."""
        for ingest in self.live.values():
            ingest.stop_sent = now
            self.send(ingest.identity, Stop("the pipeline is stopping"), now)

    def end_for(self, ingest: Ingest) -> None:
        """End an epoch its ingest did not end when told to (its later captures are refused)."""
        log.warning("stream %s: its ingest did not end its capture when told to stop: ended here", ingest.stream)
        ingest.ended = True
        self.streams.end_epoch(ingest.stream)

    # -- messages ----------------------------------------------------------------------------------

    def take(self, identity: bytes, msg: Capture | CaptureEnded | Stats, now: float) -> None:
        ingest = self.live[identity]
        if isinstance(msg, Stats):
            self._stats(ingest, msg)
        elif ingest.ended:
            self.complain("after_capture_ended", "a %s from ingest %s after its capture ended", msg.KIND, ingest.name)
        elif isinstance(msg, CaptureEnded):
            ingest.ended = True
            self.streams.end_epoch(ingest.stream, msg.counts)
            log.info("stream %s: capture ended (%s)", ingest.stream, msg.reason or "no reason given")
        else:
            self._capture(ingest, msg, now)

    def _capture(self, ingest: Ingest, cap: Capture, now: float) -> None:
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
        frame = Frame(ingest.stream, seq, cap.t_capture, cap.width, cap.height, cap.jpeg)
        zmqio.send(self.frames_pub, frame, topic=True)  # a PUB never blocks: a slow viewer misses frames
        displaced = self.broker.offer(frame, lossless)
        if displaced is not None:
            self.streams.outcome(displaced.stream, displaced.seq, DROPPED, now)
        self.dispatch(now)  # at once: a burst of captures must not displace frames a worker has room for

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

    def grant_credits(self, now: float) -> None:
        """Lossless ingests get credit as their frames leave the queue (bounded by lossless_limit)."""
        limit = self.broker.lossless_limit()
        for ingest in self.live.values():
            if ingest.lossless and not ingest.ended:
                n = limit - self.broker.queued(ingest.stream) - ingest.credit
                if n > 0 and self.send(ingest.identity, Credit(n), now):
                    ingest.credit += n

    def open(self) -> list[Ingest]:
        """Ingests whose capture has not ended."""
        return [i for i in self.live.values() if not i.ended]
