"""The core: every session on one ROUTER, frames numbered and dispatched, outcomes in order, records
delivered (docs/PROTOCOL.md), built by role (docs/PROTOCOL.md, "The core, built by role").

``Core`` is given its sockets (the ROUTER every peer's session talks to, the frames and the
metrics publishers) and its state (numbering, the recorder's delivery and state folder);
``step(now)`` takes what is waiting and does what is due, so tests drive it with sockets they
make and a clock of their own. It keeps the sessions (shared/session.py) and a table of roles,
one class each, of one shape (roles.py): the ingests (ingests.py), the workers (workers.py), the
recorder (recorders.py; its records in delivery.py), viewers (viewers.py) and control sessions
(controls.py). Each Hello, message and departure goes to its session's role; a message of a kind
its role does not take is counted and dropped. The drain (stopping.py) and the Stats and log lines
(report.py) read the core's progress (progress.py) and return what they decided; the core does it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from threading import Event

import zmq

from encoders.shared import messages, zmqio
from encoders.shared.complaints import Complaints
from encoders.shared.keys import AllowList
from encoders.shared.messages import (
    TEXT_MAX,
    Bye,
    DecodeError,
    Draining,
    EndOfStream,
    Frame,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    NoPictures,
    Records,
    Refused,
    Stop,
    Stopped,
    StreamStart,
    Welcome,
)
from encoders.shared.session import Peer, Sessions, hello_problem

from .broker import Broker
from .clocks import CoreClock
from .config import MetricsConfig
from .controls import Controls
from .core_progress import CoreProgress
from .delivery import Delivery
from .doors import Doors
from .ingests import Ingests
from .links import DataLinks
from .models import PipelineModel
from .numbering import Numbering
from .previews import Watchers
from .recorders import RecorderRole, Recorders
from .report import Reporter
from .roles import Role
from .stopping import Drain, Finish, GiveUp
from .streams import Streams
from .viewers import Viewers
from .workers import Workers

log = logging.getLogger("encoders.metrics")

POLL_MS = 50  # how long the loop waits for a message before doing what is due anyway
RECEIVE_BATCH = 1000  # messages taken before releasing and dispatching
FLUSH_S = 10.0  # a signal's drain: how long the core waits for outcomes and acks before it exits
# Roles whose tick comes before the release of what is settled; the recorder's after: sent in the same turn.
BEFORE_RELEASE = ("worker", "ingest", "viewer", "control")


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
        state_dir: Path | None = None,
        publishers: tuple[str, str] = ("", ""),
        life: str | None = None,
        on_record: Callable[[MetricsRecord], None] | None = None,
        keys: AllowList | None = None,
    ) -> None:
        """``state_dir``: where the run the last recorder recorded is kept (None: only in memory)."""
        self.cfg = cfg
        self.router, self.frames_pub, self.metrics_pub = router, frames_pub, metrics_pub
        self.numbering, self.delivery = numbering, delivery
        self.publishers = publishers  # (frames, metrics) as bound: what a viewer's Welcome names
        self.on_record = on_record or (lambda rec: None)  # each record as it goes out (metrics' latency)
        self.on_turn: Callable[[], None] = lambda: None  # each turn of the loop (the exporter's beat)
        self.life = life or uuid.uuid4().hex  # this life of the core (Welcome.core, records' core)
        self.doors = Doors(keys, [(frames_pub, publishers[0]), (metrics_pub, publishers[1])])
        self.sessions = Sessions(cfg.heartbeat_s, cfg.heartbeat_misses)
        self.streams = Streams.from_config(cfg, self.life)
        # A frame held this long is given up (its capacity would otherwise leak): past any
        # batch that max_wait allows for, and past a worker's silence.
        self.broker = Broker(hold_timeout=max(2 * cfg.max_wait, self.sessions.timeout_s))
        self.recorders = Recorders(delivery, numbering, state_dir if delivery is not None else None)
        self.model = PipelineModel(cfg.pipeline_model, cfg.pipeline_dim)
        self.complain = Complaints(log, "the core's Stats")
        self.counters: dict[str, int] = {"records": 0, "workers_lost_frames": 0, "pictures_to_recorder": 0}
        # The data links (links.py): workers' numbers, addresses and keys, the ingests' keys; and which
        # streams someone watches on the frames publisher, an XPUB (previews.py).
        self.links = DataLinks()
        self.watchers = Watchers(cfg.preview_fps)
        self.workers = Workers(
            self.broker,
            self.model,
            self.streams,
            self.sessions,
            self._send,
            self._end,
            self.complain,
            self.counters,
            links=self.links,
            assigned=lambda stream, seq, worker: self.ingests.assigned(stream, seq, worker),  # noqa: PLW0108  # made below
        )
        self.ingests = Ingests(
            self.streams,
            self.broker,
            numbering,
            frames_pub,
            send=self._send,
            dispatch=self.workers.dispatch,
            evict=self._evict,
            complain=self.complain,
            max_streams=cfg.max_streams,
            max_clock_skew=cfg.max_clock_skew,
            links=self.links,
            watchers=self.watchers,
            to_recorder=self._to_recorder,
        )
        recorder = RecorderRole(
            self.recorders,
            self.sessions,
            send=self._send,
            evict=self._evict,
            publishers=publishers,
            want_pictures=self.ingests.want_pictures,
            complain=self.complain,
        )
        self.roles: dict[str, Role] = {
            "ingest": self.ingests,
            "worker": self.workers,
            "recorder": recorder,
            "viewer": Viewers(publishers),
            "control": Controls(lambda now, reason, requester: self.begin_drain(now, reason, requester=requester)),
        }
        self.progress = CoreProgress(
            self.sessions, self.broker, self.streams, self.ingests, self.recorders, self.model, self.complain,
            self.counters,
        )  # fmt: skip
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
            self.on_turn()
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
                parts = zmqio.recv_parts(self.router, zmqio.NOBLOCK)
            except zmq.Again:
                break
            identity = zmqio.part_bytes(parts[0])
            try:
                msg = messages.decode(parts[1:])
            except DecodeError as exc:
                self.complain("bad_messages", "a message from %s does not decode: %s", self.sessions.who(identity), exc)
                continue
            self._take(identity, msg, now, via=parts[0])
        self._subscriptions()
        self._tick(now)

    def _subscriptions(self) -> None:
        """What subscribers of the frames publisher (an XPUB) started or stopped watching (previews.py)."""
        if self.frames_pub.socket_type != zmq.XPUB:
            return
        for _ in range(RECEIVE_BATCH):
            try:
                self.watchers.subscription(self.frames_pub.recv(zmqio.NOBLOCK))
            except zmq.Again:
                break

    def _tick(self, now: float) -> None:
        self._check_keys(now)
        for peer in self.sessions.expired(now):
            silent = now - peer.last_heard  # as measured here: the timeout, and at most a turn of the loop more
            self._end(peer, f"silent for {silent:.1f} s, past the {self.sessions.timeout_s:g} s timeout", now)
        for role in BEFORE_RELEASE:
            self.roles[role].tick(now)
        self.release(now)
        self.roles["recorder"].tick(now)
        if self.farewell is not None:
            told, until = self.farewell
            self.done = not (told & self.sessions.peers.keys()) or now >= until
        elif self.drain is not None:
            self._give_up(self.drain.give_up(self.progress, now), now)
            self.release(now)  # what that settled goes out now
            step = self.drain.step(self.progress, now)
            if isinstance(step, Finish):
                self._finish(now)
            elif step.say:
                self._say_draining(step.waiting_for, now)
        for peer in self.sessions.heartbeats_due(now):
            self._send(peer.identity, Heartbeat(), now)
        for stats in self.reporter.tick(self.progress, now):
            zmqio.send(self.metrics_pub, stats, topic=True)

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
        role = self.roles[peer.role]
        if isinstance(msg, role.takes):
            role.take(peer, msg, now)
        else:
            self.complain(
                "unexpected_messages", "a %s from %s %s: not its role's; dropped", msg.KIND, peer.role, peer.name
            )

    def _hello(self, identity: bytes, hello: Hello, now: float, via: zmq.Frame | None = None) -> None:
        key, key_problem = self.doors.check(hello, via)  # before the role's refusal, which may make room
        role = self.roles[hello.role]
        problem = hello_problem(hello) or key_problem or role.refusal(identity, hello, now)
        if problem is not None:
            reason, retry = problem if isinstance(problem, tuple) else (problem, False)
            if retry:  # said again and again until there is room: counted
                self.complain(f"refused_{hello.role}s", "refused %s %s for now: %s", hello.role, hello.name, reason)
            else:  # the peer exits: said each time, and on its side too
                log.warning("refused %s %s: %s", hello.role, hello.name, reason)
            self._send(identity, Refused(reason, retry=retry), now)
            return
        peer, old = self.sessions.welcome(identity, hello, now)
        if via is not None:  # the host its connection came from: where a worker's data socket is reached
            try:
                peer.state["peer_address"] = str(via.get("Peer-Address") or "")
            except (zmq.ZMQError, KeyError, UnicodeDecodeError):
                pass  # not over TCP (ipc, inproc): none
        if key is not None:
            peer.state["key"] = key
            log.info("%s %s joined with the key %s", hello.role, hello.name, key.name)
        if old is not None:
            self._end(old, "said Hello again (a new life of its session)", now)
        fields = role.join(peer, hello, now)
        self._send(identity, Welcome(self.life, self.cfg.heartbeat_s, self.cfg.heartbeat_misses, **fields), now)

    def _end(self, peer: Peer, why: str, now: float) -> None:
        """A session's life is over (Bye, silence, a new life, replaced): its role gives up what it held."""
        self.roles[peer.role].leave(peer, why, now)

    def _evict(self, identity: bytes, farewell: Message, why: str, now: float) -> None:
        """A session ended by the core (to make room for a Hello, its key revoked): removed, told ``farewell``."""
        peer = self.sessions.remove(identity)
        self._send(identity, farewell, now)
        if peer is not None:
            self._end(peer, why, now)

    # -- keys ----------------------------------------------------------------------------------------

    def _check_keys(self, now: float) -> None:
        """With keys: the sessions of a key allowed/ no longer holds in their role are ended (doors.py)."""
        for peer, key in self.doors.revoked(now, list(self.sessions.peers.values())):
            log.warning("%s %s: its key %s is revoked: its session is ended", peer.role, peer.name, key.name)
            refused = Refused(f"the key {key.name} is no longer allowed here (revoked)")
            self._evict(peer.identity, refused, f"its key {key.name} was revoked", now)

    # -- out -----------------------------------------------------------------------------------------

    def _to_recorder(self, msg: Frame | NoPictures, now: float) -> None:
        """A picture the recorder asked for (WantPictures), to its session: its snapshot; or the seqs
        whose pictures the ingest no longer has."""
        for peer in self.sessions.of_role("recorder"):
            if self._send(peer.identity, msg, now) and isinstance(msg, Frame):
                self.counters["pictures_to_recorder"] += 1

    def _send(self, identity: bytes, msg: Message, now: float) -> bool:
        """Send to one session without waiting: False if its connection is gone or full."""
        return self.sessions.send(self.router, identity, msg, now)

    def release(self, now: float) -> None:
        """What the streams release, published and held for the recorder: each stream's run of
        consecutive records as one Records on the metrics publisher (held per record with the batch
        it went in, which the recorder gets as it is while it keeps up: delivery.py)."""
        run: list[MetricsRecord] = []
        for msg in self.streams.release(now):
            if isinstance(msg, MetricsRecord):
                if run and run[-1].stream != msg.stream:
                    self._publish_records(run)
                run.append(msg)
                self.counters["records"] += 1
                self.on_record(msg)
                continue
            self._publish_records(run)  # the records before it go (and are held) first
            if self.delivery is not None:
                self.delivery.add(msg)
            zmqio.send(self.metrics_pub, msg, topic=True)
            if isinstance(msg, EndOfStream):
                log.info("stream %s ended at %d: %s", msg.stream, msg.last_seq, msg.counts)
            elif isinstance(msg, StreamStart):
                log.info("stream %s starts at %d", msg.stream, msg.first_seq)
        self._publish_records(run)
        self.streams.forget_settled()  # ended and released: only their counts and numbers are kept

    def _publish_records(self, run: list[MetricsRecord]) -> None:
        """A stream's run of records: published, and held for the recorder with the batches they went in."""
        first = 0
        for batch in Records.many(run):
            zmqio.send(self.metrics_pub, batch, topic=True)
            if self.delivery is not None:
                self.delivery.add_run(run[first : first + batch.n], batch)
            first += batch.n
        run.clear()

    def begin_drain(
        self, now: float, reason: str, *, requester: bytes | None = None, limit_s: float | None = None
    ) -> None:
        """Stop taking captures and drain (stopping.py); a time limit when a signal asked."""
        if self.drain is None:
            self.drain = Drain(reason, now, self.sessions.timeout_s)
            log.info("stopping (%s): every capture ends, then every frame gets its outcome", reason)
            self.ingests.stop_all(now)
        self.drain.ask(now, requester, limit_s)

    def _give_up(self, decided: GiveUp, now: float) -> None:
        """What the drain gave up (stopping.py): ingests' epochs ended, frames dropped or lost."""
        for stream in decided.ingests:
            self.ingests.end_for(stream)
        if decided.waiting:
            self.workers.drop_waiting(now)
        if decided.held:
            self.workers.give_up_held(now)
        if decided.unowned:
            for stream, seqs in self.streams.give_up_unowned(now).items():
                self.counters["outcomes_unowned"] = self.counters.get("outcomes_unowned", 0) + len(seqs)
                log.error("stream %s: %d frames (seq %d .. %d) had no outcome and nothing left to bring one (a fault "
                          "of the core's): given up as lost", stream, len(seqs), seqs[0], seqs[-1])  # fmt: skip

    def _say_draining(self, waiting_for: list[str], now: float) -> None:
        """Each control session that asked to stop told what the drain waits for (``encoders stop`` says it)."""
        assert self.drain is not None
        said = Draining("; ".join(waiting_for)[:TEXT_MAX])
        for identity in self.drain.requesters:
            self._send(identity, said, now)

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
                log.warning("could not tell %s that the pipeline has stopped: it is gone", self.sessions.who(identity))
        if self.drain.requesters:
            # Viewers hold no session: they hear it here, and exit (docs/PROTOCOL.md, "Stopping a pipeline").
            # A signal's drain (a restart, say) says nothing: viewers wait for the core to come back.
            zmqio.send(self.metrics_pub, Stopped(totals), topic=True)
        log.info("stopped: %d streams, %d records published", len(totals), self.counters["records"])
        self.farewell = (told, now + self.sessions.timeout_s)

    def close(self) -> None:
        """Spool records not acknowledged, for the next life; close the sockets (lingering: Stop, Stopped)."""
        if self.delivery is not None:
            self.delivery.close()
        self.router.close()
        self.frames_pub.close()
        self.metrics_pub.close()
