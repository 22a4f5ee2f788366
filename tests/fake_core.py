"""One stand-in for the core (docs/PROTOCOL.md), for the tests of every other service and for the recorder's
benchmark (benchmarks/db_process.py).

The other services run as real processes against it; the core itself is tested by its own tests. The
stand-in does none of the core's work (it numbers nothing, dispatches nothing, measures nothing: the test
says what goes out), but every rule between the core and its peers it keeps with the core's own code:

- sessions: shared/session.py's ``Sessions`` (welcomed, heard, heartbeats due, silent for the timeout)
  and ``hello_problem``; a message from a session it does not know is answered ``Refused(rejoin)``, a
  core's pause (``answering`` off, then on) is its own silence, not the peers' (``Sessions.resumed``);
- the recorder: services/metrics/recorders.py (one recorder; a second refused, or told to retry while
  the first is silent, unless it takes over; the run its Welcome names) and delivery.py (every
  ``StreamStart``, ``MetricsRecord`` and ``EndOfStream`` held until an Ack covers it, by
  ``delivery.covered``; sent again to each Ready; at most the core's window in flight);
- the wire: shared/messages.py, through shared/zmqio.py.

What a test chooses: which roles it serves (a Hello of another is refused, as a core with
``--no-recorder`` refuses a recorder), whether it answers (``answering``; ``refuse`` refuses every
Hello for good), and what it sends: the publishers its Welcome names, an ingest's credit, the
``Stopped`` a control session's Stop is answered with, records for the recorder (``deliver``), frames
on its publisher (``frame``), anything to a session (``send``), Stop to every session (``stop``).
Everything it received is kept, in order, for assertions.

Its sockets (a ROUTER, and an XPUB for frames if the test publishes them) are the test's, served by a
thread of its own until ``close()``: a service in another process keeps its session while the test
waits on something else. Everything the test asks of it runs on that thread.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import zmq

from encoders.services.metrics.clocks import CoreClock
from encoders.services.metrics.delivery import WINDOW, Delivery
from encoders.services.metrics.numbering import Numbering
from encoders.services.metrics.recorders import Recorders
from encoders.shared import messages, zmqio
from encoders.shared.messages import (
    Ack,
    Bye,
    DecodeError,
    Frame,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    Ready,
    Refused,
    Stop,
    Stopped,
    Welcome,
)
from encoders.shared.session import HEARTBEAT_S, MISSES, Peer, Sessions, hello_problem

ROLES = ("ingest", "worker", "recorder", "viewer", "control")
POLL_MS = 10  # the longest its thread waits before doing what the test asked, or what is due
FULL_MS = 1  # ... while a session's connection is full (the recorder's queue takes a few ms to drain)
HOLD = 10**9  # records held for the recorder in memory: a test's or a benchmark's, never spooled

M = TypeVar("M", bound=Message)


@dataclass
class Received:
    identity: bytes
    msg: Message
    t: float  # when it arrived, on the core's clock (time.monotonic() less the stand-in's own stalls)


class FakeCore:
    """``FakeCore(router, ...)`` on a ROUTER the test bound; its thread serves it until ``close()``.
    ``endpoint``: the address a peer is given."""

    def __init__(
        self,
        router: zmq.Socket,
        *,
        roles: Collection[str] = ROLES,
        name: str = "core-1",
        heartbeat_s: float = HEARTBEAT_S,
        misses: int = MISSES,
        publishers: tuple[str, str] = ("", ""),
        frames: zmq.Socket | None = None,
        credit: int = 0,
        refuse: str = "",
        stopped: Stopped | None = None,
        window: int = WINDOW,
    ) -> None:
        """``publishers``: what a viewer's and the recorder's Welcome name (frames, metrics); ``frames``: an
        XPUB the test's frames go out on (``frame``), named in the Welcome when ``publishers`` names none.
        ``credit``: a lossless ingest's in its Welcome. ``refuse``: every Hello refused for good, saying
        this. ``stopped``: what a control session's Stop is answered with (never answered without)."""
        self.router, self.frames = router, frames
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        if frames is not None and not publishers[0]:
            publishers = (frames.getsockopt_string(zmq.LAST_ENDPOINT), publishers[1])
        self.roles, self.name, self.publishers = frozenset(roles), name, publishers
        self.credit, self.refuse, self.stopped = credit, refuse, stopped
        self.answering = True  # False: hears everything, answers nothing, no heartbeats (a core that hangs)
        self.ignore_acks = False  # acks are noted (``acked``) but cover nothing: every record is sent again
        self.sessions, self.misses = Sessions(heartbeat_s, misses), misses
        self.lives = 1
        self._state = Path(tempfile.mkdtemp(prefix="fake-core-"))  # the core's state folder (its spool)
        self._window = window
        self.delivery = Delivery(self._state / "records.spool", HOLD, window)
        self.recorders = Recorders(self.delivery, Numbering(self._state / "numbering.json"))
        self.lock = threading.RLock()  # over what the test reads: received, acked, counts
        self.acked: dict[str, tuple[int, bool]] = {}  # per stream, the highest Ack: (seq, ended)
        self.counts = {"bad_messages": 0, "unknown_sessions": 0}
        self.subscribed = threading.Event()  # a subscriber of ``frames`` subscribed to frames
        self.first_sent_at: float | None = None  # time.perf_counter() of the first record sent to the recorder
        self.last_acked_at: float | None = None  # ... and of the last Ack that covered one
        self._received: list[Received] = []
        self._wire: dict[int, tuple[Message, list]] = {}  # id(record) -> (it, its parts encoded ahead of time)
        self._last_welcomed = b""
        self._full = False  # a send found a session's connection full: try again soon
        self._commands: queue.Queue[Callable[[float], object]] = queue.Queue()
        self._asked = self._done = 0  # commands the test gave (counted on its thread), and done (on this one)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-core", daemon=True)
        self._thread.start()

    # -- what a test does -------------------------------------------------------------------------

    def send(self, msg: Message | list[bytes], to: bytes | None = None) -> None:
        """To one session (by default the one welcomed last); raw parts (a list of bytes) go as they
        are, for messages that do not decode. Not held: a record sent this way is sent once."""
        self._do(lambda now: self._send(to or self._last_welcomed, msg, now))

    def deliver(self, msg: Message, parts: list | None = None) -> None:
        """A ``StreamStart``, ``MetricsRecord`` or ``EndOfStream`` for the recorder: held until acknowledged,
        sent while a recorder is ready, sent again to the next. A record is stamped with this life of the
        core, as the core stamps it. ``parts``: its wire form, encoded ahead of time (a benchmark's)."""
        self.deliver_all([(msg, parts)])

    def deliver_all(self, prepared: Sequence[tuple[Message, list | None]]) -> None:
        """Many records at once, each with its wire form encoded ahead of time, or None (see ``deliver``).
        Sent at once as far as the window allows: before anything the test sends after them."""

        def hold(now: float) -> None:
            for msg, parts in prepared:
                self._hold(msg, parts)
            self._pump(now)

        self._do(hold)

    def frame(self, frame: Frame) -> None:
        """On the frames publisher (``frames``), as the core publishes what it numbered."""
        assert self.frames is not None, "FakeCore(frames=...) publishes frames"
        frames = self.frames
        self._do(lambda now: zmqio.send(frames, frame, topic=True))

    def stop(self, reason: str = "the pipeline stops") -> None:
        """Stop to every session, as the core tells its peers once a pipeline has drained."""

        def stop(now: float) -> None:
            for identity in list(self.sessions.peers):
                self._send(identity, Stop(reason), now)

        self._do(stop)

    def restart(self, name: str | None = None, *, forget: bool = False) -> None:
        """A new life of the core: it knows no session (each peer is asked to say Hello again), and its
        Welcome names ``name``. ``forget``: a core without its state folder, which lost the records it held
        and the run its last recorder recorded."""

        def restart(now: float) -> None:
            for peer in list(self.sessions.peers.values()):
                self._end(self.sessions.peers.pop(peer.identity), "the core restarted")
            self.lives += 1
            self.name = name or f"core-{self.lives}"
            if forget:
                self.delivery.spool.close()
                self.delivery = Delivery(self._state / f"records-{self.name}.spool", HOLD, self._window)
                self.recorders = Recorders(self.delivery, self.recorders.numbering)
                self._wire.clear()

        self._do(restart)

    def received(self, kind: type[Message] | None = None) -> list[Received]:
        """Everything it received (of one kind), heartbeats included, in order."""
        with self.lock:
            return [r for r in self._received if kind is None or isinstance(r.msg, kind)]

    def messages(self, kind: type[M] | None = None) -> list[Any]:
        """The messages it received (of one kind; all but heartbeats), in order."""
        if kind is None:
            return [r.msg for r in self.received() if not isinstance(r.msg, Heartbeat)]
        return [r.msg for r in self.received(kind)]

    def wait(self, kind: type[M], n: int = 1, timeout: float = 15.0) -> list[Any]:
        """Once at least ``n`` messages of ``kind`` have come: all of them."""
        deadline = time.monotonic() + timeout
        while len(got := self.messages(kind)) < n:
            if time.monotonic() > deadline:
                kinds = [type(r.msg).__name__ for r in self.received()][-10:]
                raise AssertionError(f"{len(got)} of {n} {kind.__name__} came in {timeout} s; last: {kinds}")
            time.sleep(0.01)  # the poll interval
        return got

    def joined(self) -> bool:
        """A recorder has said Ready: records go to it."""
        return self.recorders.ready is not None

    def settled(self) -> bool:
        """Everything the test asked is done, and every record delivered has been acknowledged."""
        return self._done == self._asked and self.delivery.settled

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        if not self.subscribed.wait(timeout):
            raise AssertionError("nobody subscribed to the frames")

    def wait_acked(self, stream: str, seq: int, *, ended: bool = False, timeout: float = 20.0) -> None:
        """Until an Ack of ``stream`` up to ``seq`` (and its end) has come, and done what it does."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = self.acked.get(stream)
            if got is not None and got[0] >= seq and (got[1] or not ended):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no ack of {stream} up to {seq}{' (ended)' if ended else ''}: got {got}")
            time.sleep(0.02)  # the poll interval

    def close(self) -> None:
        """Stop the thread (the sockets are the test's to close)."""
        self._closing.set()
        self._thread.join(5)
        self.delivery.spool.close()
        shutil.rmtree(self._state, ignore_errors=True)

    # -- its thread ---------------------------------------------------------------------------------

    def _do(self, command: Callable[[float], object]) -> None:
        self._asked += 1
        self._commands.put(command)

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        if self.frames is not None:
            poller.register(self.frames, zmq.POLLIN)
        # Its own time as the core keeps it: a turn of this thread that comes late (a busy machine) is
        # nobody's silence, and neither is the time it did not answer (clocks.py).
        clock = CoreClock(max(self.sessions.heartbeat_s / 2, 2 * POLL_MS / 1000))
        answered = True
        while not self._closing.is_set():
            ready = dict(poller.poll(FULL_MS if self._full else POLL_MS))
            now = clock()
            if (clock.gap and clock.gap + clock.stall_s > self.sessions.timeout_s) or (self.answering and not answered):
                self.sessions.resumed(now)
            answered = self.answering
            if self.frames is not None and self.frames in ready:
                self._subscriptions()
            if self.router in ready:
                self._receive(now)
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                command(now)
                self._done += 1
            if self.answering:
                self._tick(now)

    def _subscriptions(self) -> None:
        assert self.frames is not None
        while True:
            try:
                subscription = self.frames.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if subscription == b"\x01frame/":
                self.subscribed.set()

    def _receive(self, now: float) -> None:
        while True:
            try:
                parts = self.router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            identity = parts[0]
            try:
                msg = messages.decode(parts[1:])
            except DecodeError:
                with self.lock:
                    self.counts["bad_messages"] += 1
                continue
            with self.lock:
                self._received.append(Received(identity, msg, now))
            if self.answering:
                self._take(identity, msg, now)

    def _tick(self, now: float) -> None:
        for peer in self.sessions.expired(now):
            self._end(peer, f"silent for {self.sessions.timeout_s:g} s")
        self._pump(now)
        if self.delivery.settled:
            self._wire.clear()
        for peer in self.sessions.heartbeats_due(now):
            self._send(peer.identity, Heartbeat(), now)

    def _pump(self, now: float) -> None:
        """What is due to the ready recorder, as far as the window and its connection allow."""
        sent, started = self.delivery.counts["records_sent"], time.perf_counter()
        self._full = False
        self.recorders.pump(lambda identity, msg: self._send(identity, msg, now))
        if self.delivery.counts["records_sent"] > sent and self.first_sent_at is None:
            self.first_sent_at = started

    # -- sessions, as the core keeps them (services/metrics/service.py) -------------------------------

    def _take(self, identity: bytes, msg: Message, now: float) -> None:
        if isinstance(msg, Hello):
            self._hello(identity, msg, now)
            return
        peer = self.sessions.heard(identity, now)
        if peer is None:
            if not isinstance(msg, Bye):  # a Bye from a session already gone needs no answer
                with self.lock:
                    self.counts["unknown_sessions"] += 1
                self._send(identity, Refused("this core does not know the session: say Hello", rejoin=True), now)
            return
        if isinstance(msg, Bye):
            self.sessions.remove(identity)
            self._end(peer, f"said Bye ({msg.reason or 'no reason given'})")
        elif peer.role == "recorder" and isinstance(msg, Ready | Ack):
            self._recorder(peer, msg)
        elif peer.role == "control" and isinstance(msg, Stop) and self.stopped is not None:
            self._send(identity, self.stopped, now)
        # Anything else is the test's to look at (received).

    def _hello(self, identity: bytes, hello: Hello, now: float) -> None:
        problem: str | tuple[str, bool] | None = self.refuse or hello_problem(hello)
        if problem is None and hello.role not in self.roles:
            problem = f"this core serves no {hello.role} (a test's stand-in for the core)"
        if problem is None and hello.role == "recorder":
            problem = self.recorders.refusal(
                identity,
                hello,
                lambda i: self.sessions.peers[i].name,
                lambda i: now - self.sessions.peers[i].last_heard > self.sessions.heartbeat_s,
            )
        if problem is not None:
            reason, retry = problem if isinstance(problem, tuple) else (problem, False)
            self._send(identity, Refused(reason, retry=retry), now)
            return
        if hello.role == "recorder" and (holder := self.recorders.holder(identity)) is not None:
            self._send(holder, Bye("taken over"), now)  # it takes over: the first stops, writing what it holds
            self._end(self.sessions.peers.pop(holder), f"taken over by {hello.name}")
        _, old = self.sessions.welcome(identity, hello, now)
        if old is not None:
            self._end(old, "said Hello again (a new life of its session)")
        welcome = Welcome(self.name, self.sessions.heartbeat_s, self.misses)
        if hello.role == "ingest":
            welcome.credit = self.credit
        elif hello.role == "recorder":
            welcome.run = self.recorders.join(identity, hello)
        if hello.role in ("viewer", "recorder"):
            welcome.frames, welcome.metrics = self.publishers
        self._last_welcomed = identity
        self._send(identity, welcome, now)

    def _end(self, peer: Peer, why: str) -> None:
        if peer.role == "recorder":
            self.recorders.leave(peer.identity, peer.name, why)

    def _recorder(self, peer: Peer, msg: Ready | Ack) -> None:
        acked = self.delivery.counts["records_acked"]
        if not (isinstance(msg, Ack) and self.ignore_acks):
            self.recorders.take(peer.identity, peer.name, msg)
        if self.delivery.counts["records_acked"] > acked:
            self.last_acked_at = time.perf_counter()
        if isinstance(msg, Ack):  # noted once it has done what it does: a test that waits for it sees that too
            with self.lock:
                self.acked[msg.stream] = max(self.acked.get(msg.stream, (-2, False)), (msg.seq, msg.ended))

    def _hold(self, msg: Message, parts: list | None) -> None:
        if isinstance(msg, MetricsRecord) and not msg.core:
            msg.core = self.name
        if parts is not None:
            self._wire[id(msg)] = (msg, parts)
        self.delivery.add(msg)

    def _send(self, identity: bytes, msg: Message | list[bytes], now: float) -> bool:
        """To one session without waiting, as the core sends: False if its connection is gone or full."""
        if isinstance(msg, list):
            parts = msg
        else:
            wire = self._wire.get(id(msg))
            parts = wire[1] if wire is not None and wire[0] is msg else messages.encode(msg)
        try:
            self.router.send_multipart([identity, *parts], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._full = True
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False
        peer = self.sessions.peers.get(identity)
        if peer is not None:
            self.sessions.sent(peer, now)
        return True
