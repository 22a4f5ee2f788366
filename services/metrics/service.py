"""The core: every session on one ROUTER, frames numbered and dispatched, outcomes in order, records
delivered (docs/PROTOCOL.md). Longer than 350 lines until protocol 3 builds the core by role (a
class per role and a dispatch table: docs/PROTOCOL.md, "The core, built by role").

``Core`` is given its sockets (the ROUTER every peer's session talks to, the frames and the
metrics publishers) and its state (numbering, the recorder's delivery); ``step(now)`` takes
what is waiting and does what is due, so tests drive it with sockets they make and a clock of
their own. What each part decides lives in its own module: sessions in shared/session.py,
the cameras' sessions and captures in ingests.py, dispatch in broker.py, numbering in
numbering.py, order and drift in streams.py, the recorder's session in recorders.py and its
records in delivery.py, the drain in stopping.py, Stats and log lines in report.py. This class
moves messages between them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from threading import Event

import zmq

from encoders.shared import messages, zmqio
from encoders.shared.complaints import Complaints
from encoders.shared.keys import AllowList
from encoders.shared.messages import (
    Ack,
    Bye,
    Capture,
    CaptureEnded,
    DecodeError,
    Embedding,
    EndOfStream,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    Ready,
    Refused,
    Skipped,
    Stats,
    Stop,
    Stopped,
    StreamStart,
    Welcome,
)
from encoders.shared.session import Peer, Sessions, hello_problem

from .alerts import AlertRules
from .broker import Broker
from .clocks import CoreClock
from .config import MetricsConfig
from .delivery import Delivery
from .doors import Doors
from .ingests import Ingests
from .models import PipelineModel
from .numbering import Numbering
from .recorders import Recorders
from .reorder import LOST
from .report import Reporter
from .scenes import SceneRule
from .stopping import Drain
from .streams import Streams

log = logging.getLogger("encoders.metrics")

POLL_MS = 50  # how long the loop waits for a message before doing what is due anyway
RECEIVE_BATCH = 1000  # messages taken before releasing and dispatching
FLUSH_S = 10.0  # a signal's drain: how long the core waits for outcomes and acks before it exits


class Core:
    def __init__(
        self,
        cfg: MetricsConfig,
        router: zmq.Socket,
        frames_pub: zmq.Socket,
        metrics_pub: zmq.Socket,
        numbering: Numbering,
        delivery: Delivery | None,
        *,
        publishers: tuple[str, str] = ("", ""),
        life: str | None = None,
        on_record: Callable[[MetricsRecord], None] | None = None,
        keys: AllowList | None = None,
    ) -> None:
        self.cfg = cfg
        self.router, self.frames_pub, self.metrics_pub = router, frames_pub, metrics_pub
        self.numbering, self.delivery = numbering, delivery
        self.publishers = publishers  # (frames, metrics) as bound: what a viewer's Welcome names
        self.on_record = on_record or (lambda rec: None)  # each record as it goes out (metrics' latency)
        self.life = life or uuid.uuid4().hex  # this life of the core (Welcome.core, records' core)
        self.doors = Doors(keys, [(frames_pub, publishers[0]), (metrics_pub, publishers[1])])
        self.sessions = Sessions(cfg.heartbeat_s, cfg.heartbeat_misses)
        scenes = SceneRule.from_config(cfg)
        self.streams = Streams(
            cfg.rolling_window,
            cfg.max_wait,
            scenes,
            max_pending=cfg.max_pending,
            core=self.life,
            alerts=AlertRules.from_config(cfg),
        )
        # A frame held this long is given up (its capacity would otherwise leak): past any
        # batch that max_wait allows for, and past a worker's silence.
        self.broker = Broker(hold_timeout=max(2 * cfg.max_wait, self.sessions.timeout_s))
        self.recorders = Recorders(delivery, numbering, numbering.path.parent if delivery is not None else None)
        self.model = PipelineModel(cfg.pipeline_model, cfg.pipeline_dim)
        self.complain = Complaints(log, "the core's Stats")
        self.ingests = Ingests(
            self.streams,
            self.broker,
            numbering,
            frames_pub,
            send=self._send,
            dispatch=self._dispatch,
            complain=self.complain,
            max_streams=cfg.max_streams,
            max_clock_skew=cfg.max_clock_skew,
        )
        self.counters: dict[str, int] = {"records": 0, "workers_lost_frames": 0}
        self.drain: Drain | None = None
        # Once drained: the peers told Stop or Stopped, and until when the core waits for their Bye.
        self.farewell: tuple[set[bytes], float] | None = None
        self.done = False
        self.reporter = Reporter(log)

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, stop: Event) -> None:
        """Until a control session's Stop or a signal (``stop``) has drained the pipeline."""
        clock = CoreClock(max(self.sessions.heartbeat_s / 2, 2 * POLL_MS / 1000))
        while not self.done:
            self.router.poll(POLL_MS)
            now = clock()
            if clock.gap:  # the loop did not run: the silence meanwhile is nobody's (clocks.py)
                stalled = clock.gap + clock.stall_s
                if stalled > self.sessions.timeout_s:  # what peers sent meanwhile is read before any expires
                    self.sessions.resumed(now)
                self.complain(
                    "core_stalls",
                    "the core did not run for %.1f s (paused, or starved of CPU): that time is not counted "
                    "against any session, frame or outcome",
                    stalled,
                )
            if stop.is_set() and (self.drain is None or self.drain.deadline is None):
                self.begin_drain(now, "a signal", limit_s=FLUSH_S)
            self.step(now)

    def step(self, now: float) -> None:
        """Take every message waiting (up to a batch), then do what is due."""
        for _ in range(RECEIVE_BATCH):
            try:
                parts = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            identity = zmqio.part_bytes(parts[0])
            try:
                msg = messages.decode(parts[1:])
            except DecodeError as exc:
                self.complain("bad_messages", "a message from %s does not decode: %s", self._who(identity), exc)
                continue
            self._take(identity, msg, now, via=parts[0])
        self._tick(now)

    def _tick(self, now: float) -> None:
        self._check_keys(now)
        for peer in self.sessions.expired(now):
            self._end(peer, f"silent for {self.sessions.timeout_s:g} s", now)
        for identity, (stream, seq) in self.broker.overdue(now):
            self.complain("frames_overdue", "worker %s held %s/%d too long: given up", self._who(identity), stream, seq)
            self.streams.outcome(stream, seq, LOST, now)
        self._dispatch(now)
        self.ingests.grant_credits(now)
        self.release(now)
        self.recorders.pump(lambda identity, msg: self._send(identity, msg, now))
        if self.farewell is not None:
            told, until = self.farewell
            self.done = not (told & self.sessions.peers.keys()) or now >= until
        elif self.drain is not None and self.drain.step(self, now):
            self._finish(now)
        for peer in self.sessions.heartbeats_due(now):
            self._send(peer.identity, Heartbeat(), now)
        self.reporter.tick(self, now)

    # -- sessions ------------------------------------------------------------------------------------

    def _take(self, identity: bytes, msg: Message, now: float, via: zmq.Frame | None = None) -> None:
        """``via``: the frame it came in (with keys, its User-Id names the key: read for a Hello)."""
        if isinstance(msg, Hello):
            self._hello(identity, msg, now, via)
            return
        peer = self.sessions.heard(identity, now)
        if peer is None:
            if not isinstance(msg, Bye):  # a Bye from a session already gone needs no answer
                self.complain(
                    "unknown_sessions", "a %s from a session this core does not know: asked to rejoin", msg.KIND
                )
                self._send(identity, Refused("this core does not know the session: say Hello", rejoin=True), now)
            return
        if peer.role == "worker":
            self.broker.heard(identity)  # anything from a worker a send failed to says it is reachable again
        if isinstance(msg, Heartbeat):
            return
        if isinstance(msg, Bye):
            self.sessions.remove(identity)
            self._end(peer, f"said Bye ({msg.reason or 'no reason given'})", now)
            return
        role = peer.role
        if role == "ingest" and isinstance(msg, Capture | CaptureEnded | Stats):
            self.ingests.take(identity, msg, now)
        elif role == "worker" and isinstance(msg, Embedding | Skipped):
            self._result(peer, msg, now)
        elif role == "recorder" and isinstance(msg, Ready | Ack):
            self.recorders.take(identity, peer.name, msg)
        elif role == "control" and isinstance(msg, Stop):
            log.info("control session %s asks the pipeline to stop (%s)", peer.name, msg.reason or "no reason given")
            self.begin_drain(now, f"asked by {peer.name}", requester=identity)
        else:
            self.complain("unexpected_messages", "a %s from %s %s: not its role's; dropped", msg.KIND, role, peer.name)

    def _hello(self, identity: bytes, hello: Hello, now: float, via: zmq.Frame | None = None) -> None:
        key, key_problem = self.doors.check(hello, via)  # before _refusal, which may make room
        problem = hello_problem(hello) or key_problem or self._refusal(identity, hello, now)
        if problem is not None:
            reason, retry = problem if isinstance(problem, tuple) else (problem, False)
            if retry:  # said again and again until there is room: counted
                self.complain(f"refused_{hello.role}s", "refused %s %s for now: %s", hello.role, hello.name, reason)
            else:  # the peer exits: said each time, and on its side too
                log.warning("refused %s %s: %s", hello.role, hello.name, reason)
            self._send(identity, Refused(reason, retry=retry), now)
            return
        peer, old = self.sessions.welcome(identity, hello, now)
        if key is not None:
            peer.state["key"] = key
            log.info("%s %s joined with the key %s", hello.role, hello.name, key.name)
        if old is not None:
            self._end(old, "said Hello again (a new life of its session)", now)
        welcome = Welcome(self.life, self.cfg.heartbeat_s, self.cfg.heartbeat_misses)
        if hello.role == "ingest":
            welcome.credit = self.ingests.join(identity, hello, now)
        elif hello.role == "worker":
            self.model.join(hello)
            self.broker.add_worker(identity, hello.name, hello.capacity)
            log.info("worker %s joined: capacity %d, model %s (%d floats)", hello.name, hello.capacity, hello.model,
                     hello.dim)  # fmt: skip
        elif hello.role == "recorder":
            welcome.run = self.recorders.join(identity, hello)
        if hello.role in ("viewer", "recorder"):
            welcome.frames, welcome.metrics = self.publishers
        self._send(identity, welcome, now)

    def _refusal(self, identity: bytes, hello: Hello, now: float) -> str | tuple[str, bool] | None:
        """Why this role cannot join now (with retry=True when it may later), or None; makes room if it may."""
        if hello.role == "ingest":
            if self.drain is not None:
                return "the core is stopping", True
            refusal = self.ingests.refusal(identity, hello)
            if refusal is not None:
                return refusal, True
            holder = self.ingests.holder(hello, identity)
            if holder is not None:
                # Two ingests claim one camera: the newest works, the other is refused for good.
                old = self.sessions.peers.pop(holder)
                log.warning(
                    "ingest %s claims stream %s, which ingest %s had: the new one replaces it (two ingests of "
                    "one camera is a mistake to fix)",
                    hello.name,
                    hello.stream,
                    old.name,
                )
                self._send(holder, Refused(f"stream {hello.stream} was taken by another ingest ({hello.name})"), now)
                self._end(old, f"replaced by {hello.name}", now)
        elif hello.role == "worker":
            return self.model.refusal(hello)
        elif hello.role == "recorder":
            said = self.recorders.refusal(
                identity,
                hello,
                lambda i: self.sessions.peers[i].name,
                lambda i: now - self.sessions.peers[i].last_heard > self.cfg.heartbeat_s,
            )
            if said is not None:
                return said
            holder = self.recorders.holder(identity)
            if holder is not None:  # it takes over: the first stops, writing what it holds
                log.warning("recorder %s takes over from recorder %s", hello.name, self.sessions.peers[holder].name)
                self._send(holder, Bye("taken over"), now)
                self._end(self.sessions.peers.pop(holder), f"taken over by {hello.name}", now)
        return None

    def _end(self, peer: Peer, why: str, now: float) -> None:
        """A session's life is over (Bye, silence, a new life, replaced): give up what it held."""
        if peer.role == "ingest":
            self.ingests.leave(peer.identity, why)
        elif peer.role == "worker":
            lost = self.broker.remove_worker(peer.identity)
            for stream, seq in lost:
                self.streams.outcome(stream, seq, LOST, now)
            self.counters["workers_lost_frames"] += len(lost)
            (log.warning if lost else log.info)(
                "worker %s left (%s): %d frames it held lost", peer.name, why, len(lost)
            )
        elif peer.role == "recorder":
            self.recorders.leave(peer.identity, peer.name, why)

    def _dispatch(self, now: float) -> None:
        """Frames out to workers with room (streams in turn); a send that fails puts the frame back."""
        for identity, frame in self.broker.assign(now):
            if not self._send(identity, frame, now):
                self.broker.undo(identity, frame)

    # -- keys ----------------------------------------------------------------------------------------

    def _check_keys(self, now: float) -> None:
        """With keys: the sessions of a key allowed/ no longer holds in their role are ended (doors.py)."""
        for peer, key in self.doors.revoked(now, list(self.sessions.peers.values())):
            log.warning("%s %s: its key %s is revoked: its session is ended", peer.role, peer.name, key.name)
            self._send(peer.identity, Refused(f"the key {key.name} is no longer allowed here (revoked)"), now)
            self.sessions.remove(peer.identity)
            self._end(peer, f"its key {key.name} was revoked", now)

    # -- workers --------------------------------------------------------------------

    def _result(self, peer: Peer, msg: Embedding | Skipped, now: float) -> None:
        if not self.broker.result(peer.identity, msg.stream, msg.seq):
            self.complain(
                "unexpected_results",
                "a result for %s/%d from worker %s, which does not hold that frame: dropped",
                msg.stream,
                msg.seq,
                peer.name,
            )
            return
        if isinstance(msg, Skipped):
            self.complain("skipped", "worker %s skipped %s/%d: %s", peer.name, msg.stream, msg.seq, msg.reason)
        elif (problem := self.model.result_problem(peer.hello, msg)) is not None:
            # Recorded, it would decide the database's vector type or be refused there: the frame is
            # skipped (counted), and the worker told and let go (what else it holds is lost).
            log.error("worker %s sent %s/%d %s; it is let go", peer.name, msg.stream, msg.seq, problem)
            self.streams.outcome(msg.stream, msg.seq, Skipped(msg.stream, msg.seq, peer.name, problem), now)
            self._send(peer.identity, Refused(f"this core refused your result: {problem}"), now)
            self.sessions.remove(peer.identity)
            self._end(peer, "sent an embedding of another model or length", now)
            return
        self.streams.outcome(msg.stream, msg.seq, msg, now)  # too late: counted by the stream
        self._dispatch(now)  # the capacity it freed lets the next frame out

    # -- out -----------------------------------------------------------------------------------------

    def _send(self, identity: bytes, msg: Message, now: float) -> bool:
        """Send to one session without waiting: False if its connection is gone or full."""
        try:
            zmqio.send(self.router, msg, prefix=[identity], flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False
        peer = self.sessions.peers.get(identity)
        if peer is not None:
            self.sessions.sent(peer, now)
        return True

    def release(self, now: float) -> None:
        for msg in self.streams.release(now):
            zmqio.send(self.metrics_pub, msg, topic=True)
            if self.delivery is not None:
                self.delivery.add(msg)
            if isinstance(msg, EndOfStream):
                log.info("stream %s ended at %d: %s", msg.stream, msg.last_seq, msg.counts)
            elif isinstance(msg, StreamStart):
                log.info("stream %s starts at %d", msg.stream, msg.first_seq)
            else:
                self.counters["records"] += 1
                self.on_record(msg)
        self.streams.forget_settled()  # ended and released: only their counts and numbers are kept

    def begin_drain(
        self, now: float, reason: str, *, requester: bytes | None = None, limit_s: float | None = None
    ) -> None:
        """Stop taking captures and drain (stopping.py); a time limit when a signal asked."""
        if self.drain is None:
            self.drain = Drain(reason, now)
            log.info("stopping (%s): every capture ends, then every frame gets its outcome", reason)
            self.ingests.stop_all(now)
        self.drain.ask(now, requester, limit_s)

    def _finish(self, now: float) -> None:
        """Drained (or out of time): workers and the recorder told to Stop, each asker told Stopped, and
        when a control session asked, viewers too (Stopped on the metrics publisher, topic ``stopped/``).

        The core then waits for their Bye (at most a heartbeat timeout) before it exits: a core
        that closed its connections at once, with their heartbeats unread, would reset them, and
        a peer's system can throw away the Stopped it had not read yet (seen: 1 run in 30).
        """
        told = set()
        for peer in self.sessions.peers.values():
            if peer.role in ("worker", "recorder") and self._send(peer.identity, Stop("the pipeline has stopped"), now):
                told.add(peer.identity)
        totals = {name: self.streams.totals(name) for name in self.streams.names()}
        assert self.drain is not None  # finishing a drain
        for identity in self.drain.requesters:
            if self._send(identity, Stopped(totals), now):
                told.add(identity)
            else:
                log.warning("could not tell %s that the pipeline has stopped: it is gone", self._who(identity))
        if self.drain.requesters:
            # Viewers hold no session: they hear it here, and exit (docs/PROTOCOL.md, "Stopping a pipeline").
            # A signal's drain (a restart, say) says nothing: viewers wait for the core to come back.
            zmqio.send(self.metrics_pub, Stopped(totals), topic=True)
        log.info("stopped: %d streams, %d records published", len(totals), self.counters["records"])
        self.farewell = (told, now + self.sessions.timeout_s)

    def _who(self, identity: bytes) -> str:
        peer = self.sessions.peers.get(identity)
        return f"{peer.role} {peer.name}" if peer is not None else f"session {identity.hex()[:8]}"

    def close(self) -> None:
        """Spool records not acknowledged, for the next life; close the sockets (lingering: Stop, Stopped)."""
        if self.delivery is not None:
            self.delivery.close()
        self.router.close()
        self.frames_pub.close()
        self.metrics_pub.close()
