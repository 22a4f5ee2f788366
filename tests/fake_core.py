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
  ``StreamStart``, ``MetricsRecord`` and ``EndOfStream`` held until an ack covers it, by
  ``delivery.covered``; consecutive records of a stream sent as one ``Records``; sent again to each
  Ready; at most the core's window in flight; the recorder's ``Acks`` applied per stream);
- the wire: shared/messages.py, through shared/zmqio.py.

What a test chooses: which roles it serves (a Hello of another is refused, as a core with
``--no-recorder`` refuses a recorder), whether it answers (``answering``; ``refuse`` refuses every
Hello for good), and what it sends: the publishers its Welcome names, an ingest's credit, the
``Stopped`` a control session's Stop is answered with, records for the recorder (``deliver``), the
pictures of an ingest's ring (``frame``: handed to the recorder when its WantPictures asks for them,
and published on the frames publisher if there is one), anything to a session (``send``), Stop to
every session (``stop``).
Everything it received is kept, in order, for assertions.

Protocol 3's data links, kept as simply as the tests need: an ingest is told one worker (number 1),
whose data socket the stand-in holds itself (``data``, on loopback), and each capture a ``Captured``
announces is assigned to it at once (seqs per stream from 0); each picture that reaches that socket is
kept as the ``Capture`` it stands for (its JPEG with it), as protocol 2's ingest sent it. A ``Frame``
the test sends to a worker's session goes to that worker's data socket instead (its Hello names it),
as a ``Pictures`` of one row, as an ingest sends it.

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
    Acks,
    Assigned,
    Assignment,
    Bye,
    Captured,
    DecodeError,
    Draining,
    Embedding,
    Frame,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    Pictures,
    Ready,
    Refused,
    Results,
    Skipped,
    Stop,
    Stopped,
    WantPictures,
    Welcome,
    Workers,
)
from encoders.shared.session import HEARTBEAT_S, MISSES, Peer, Sessions, hello_problem

ROLES = ("ingest", "worker", "recorder", "viewer", "control")
POLL_MS = 10  # the longest its thread waits before doing what the test asked, or what is due
FULL_MS = 1  # ... while a session's connection is full (the recorder's queue takes a few ms to drain)
HOLD = 10**9  # records held for the recorder in memory: a test's or a benchmark's, never spooled
RING = 4096  # pictures kept for the recorder's WantPictures (an ingest keeps ENCODERS_PICTURE_RING)


@dataclass
class Capture:
    """A picture an ingest sent, as the tests see it: its capture time, size and JPEG. (Protocol 2 sent
    it so, as a message of its own; protocol 3 announces it in a Captured and sends the JPEG to a worker.)"""

    t_capture: float
    width: int
    height: int
    jpeg: bytes = b""


@dataclass
class Received:
    identity: bytes
    msg: Message | Embedding | Skipped | Capture  # a worker's Results: one a row; a picture: its Capture
    t: float  # when it arrived, on the core's clock (time.monotonic() less the stand-in's own stalls)


M = TypeVar("M", bound=Message | Embedding | Skipped | Capture)  # Results kept as its rows; pictures as Captures


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
        draining: str = "",
        window: int = WINDOW,
    ) -> None:
        """``publishers``: what a viewer's and the recorder's Welcome name (frames, metrics); ``frames``: an
        XPUB the test's frames go out on (``frame``), named in the Welcome when ``publishers`` names none.
        ``credit``: a lossless ingest's in its Welcome. ``refuse``: every Hello refused for good, saying
        this. ``stopped``: what a control session's Stop is answered with (never answered without);
        ``draining``: without it, a Stop is answered with Draining saying this (what a drain waits for)."""
        self.router, self.frames = router, frames
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        if frames is not None and not publishers[0]:
            publishers = (frames.getsockopt_string(zmq.LAST_ENDPOINT), publishers[1])
        self.roles, self.name, self.publishers = frozenset(roles), name, publishers
        self.credit, self.refuse, self.stopped = credit, refuse, stopped
        self.draining = draining
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
        # The data links (protocol 3): the one worker's data socket an ingest is told of, and a DEALER to each
        # worker's data socket (its Hello's), for the Frames the test sends it; seqs per stream.
        self.data = router.context.socket(zmq.ROUTER)
        self.data.setsockopt(zmq.LINGER, 0)
        self.data.bind("tcp://127.0.0.1:*")
        self.data_ep = self.data.getsockopt_string(zmq.LAST_ENDPOINT)
        self._to_workers: dict[bytes, zmq.Socket] = {}
        self._seqs: dict[str, int] = {}
        self._ring: dict[tuple[str, int], Frame] = {}  # the pictures the test gave (``frame``), the newest RING
        self.pictures_wanted: list[tuple[str, int]] = []  # every (stream, seq) the recorder asked for
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
        """A picture an ingest holds in its ring (protocol 3): handed to the recorder when it asks for it
        (WantPictures), as the core hands it the ingest's answer; and on the frames publisher
        (``frames``, if any), as a preview."""
        frames = self.frames

        def keep(now: float) -> None:
            self._ring[(frame.stream, frame.seq)] = frame
            while len(self._ring) > RING:
                self._ring.pop(next(iter(self._ring)))
            if frames is not None:
                zmqio.send(frames, frame, topic=True)

        self._do(keep)

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

    def received(self, kind: type[Any] | None = None) -> list[Received]:
        """Everything it received (of one kind), heartbeats included, in order; a worker's Results as
        its rows (Embedding, Skipped), as protocol 2's workers sent them."""
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

    def wait_joined(self, timeout: float = 20.0) -> None:
        """Until a recorder has said Ready (then ``send`` reaches it)."""
        deadline = time.monotonic() + timeout
        while not self.joined():
            if time.monotonic() > deadline:
                raise AssertionError("no recorder said Ready")
            time.sleep(0.02)  # the poll interval

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
        for sock in [self.data, *self._to_workers.values()]:
            sock.close(0)
        self.delivery.spool.close()
        shutil.rmtree(self._state, ignore_errors=True)

    # -- its thread ---------------------------------------------------------------------------------

    def _do(self, command: Callable[[float], object]) -> None:
        self._asked += 1
        self._commands.put(command)

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.data, zmq.POLLIN)
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
            if self.data in ready:
                self._pictures(now)
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
                if isinstance(msg, Results):  # a worker's batch: kept as its rows, one a frame, for the tests
                    self._received += [Received(identity, row, now) for row in msg.rows()]
                else:
                    self._received.append(Received(identity, msg, now))
            if self.answering:
                self._take(identity, msg, now)

    def _pictures(self, now: float) -> None:
        """Pictures on the stand-in worker's data socket: each kept as the Capture it stands for."""
        while True:
            try:
                parts = self.data.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                msg = messages.decode(parts[1:])
            except DecodeError:
                with self.lock:
                    self.counts["bad_messages"] += 1
                continue
            if isinstance(msg, Pictures):
                with self.lock:
                    self._received += [
                        Received(b"", Capture(f.t_capture, f.width, f.height, f.jpeg), now) for f in msg.frames()
                    ]

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
        elif peer.role == "ingest" and isinstance(msg, Captured) and peer.hello.stream is not None:
            stream = peer.hello.stream
            rows = []
            for note in msg.rows():
                seq = self._seqs.get(stream, 0)
                self._seqs[stream] = seq + 1
                rows.append(Assignment(note.id, seq, 1))
            self._send(identity, Assigned.of(rows), now)
        elif peer.role == "recorder" and isinstance(msg, Ready | Acks):
            self._recorder(peer, msg)
        elif peer.role == "recorder" and isinstance(msg, WantPictures):
            # As the core asks the stream's ingest and hands the recorder its answer: those it has.
            with self.lock:
                self.pictures_wanted += [(msg.stream, seq) for seq in msg.seqs()]
            for seq in msg.seqs():
                picture = self._ring.get((msg.stream, seq))
                if picture is not None:
                    self._send(identity, picture, now)
        elif peer.role == "control" and isinstance(msg, Stop) and self.stopped is not None:
            self._send(identity, self.stopped, now)
        elif peer.role == "control" and isinstance(msg, Stop) and self.draining:
            self._send(identity, Draining(self.draining), now)  # a drain that goes on: what it waits for
        # Anything else is the test's to look at (received).

    def _hello(self, identity: bytes, hello: Hello, now: float) -> None:
        problem: str | tuple[str, bool] | None = self.refuse or hello_problem(hello)
        if problem is None and hello.role not in self.roles:
            problem = f"this core serves no {hello.role} (a test's stand-in for the core)"
        if problem is None and hello.role == "recorder":
            problem = self.recorders.refusal_among(self.sessions, identity, hello, now)
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
        if hello.role == "ingest":
            self._send(identity, Workers({"1": {"address": self.data_ep, "key": ""}}), now)
        elif hello.role == "worker" and hello.data:
            old_link = self._to_workers.pop(identity, None)
            if old_link is not None:
                old_link.close(0)
            link = self.router.context.socket(zmq.DEALER)
            link.setsockopt(zmq.LINGER, 0)
            link.connect(hello.data)
            self._to_workers[identity] = link

    def _end(self, peer: Peer, why: str) -> None:
        if peer.role == "recorder":
            self.recorders.leave(peer.identity, peer.name, why)

    def _recorder(self, peer: Peer, msg: Ready | Acks) -> None:
        acked = self.delivery.counts["records_acked"]
        if not (isinstance(msg, Acks) and self.ignore_acks):
            self.recorders.take(peer.identity, peer.name, msg)
        if self.delivery.counts["records_acked"] > acked:
            self.last_acked_at = time.perf_counter()
        if isinstance(msg, Acks):  # noted once it has done what it does: a test that waits for it sees that too
            with self.lock:
                for ack in msg.rows():
                    self.acked[ack.stream] = max(self.acked.get(ack.stream, (-2, False)), (ack.seq, ack.ended))

    def _hold(self, msg: Message, parts: list | None) -> None:
        if isinstance(msg, MetricsRecord) and not msg.core:
            msg.core = self.name
        if parts is not None:
            self._wire[id(msg)] = (msg, parts)
        self.delivery.add(msg)

    def _send(self, identity: bytes, msg: Message | list[bytes], now: float) -> bool:
        """To one session without waiting, as the core sends (``Sessions.send``): False if its connection is
        gone or full (then the thread comes back sooner, for a connection that drains)."""
        if isinstance(msg, Frame) and identity in self._to_workers:
            zmqio.send(self._to_workers[identity], Pictures.of(msg.stream, [msg]))  # its data socket, as an ingest
            return True
        if not isinstance(msg, list):
            wire = self._wire.get(id(msg))
            msg = wire[1] if wire is not None and wire[0] is msg else msg
        if self.sessions.send(self.router, identity, msg, now):
            return True
        self._full = True
        return False
