"""A core as the recorder sees it, for the recorder's tests: not the metrics service, only its side of the protocol.

It binds what the core binds for a recorder (docs/PROTOCOL.md): a ROUTER for sessions and a
publisher of frames (an XPUB, so a test knows when the recorder's subscription has
arrived). On a thread of its own it welcomes the recorder (refusing a second one unless it
says takeover, which stops the first), heartbeats, holds every record until it is
acknowledged and sends again what is not on every Ready, as the core does. A test drives it
with plain calls (``record``, ``end``, ``frame``, ``stop``, ``restart``) and reads what it saw
(``acked``, ``readies``, ``hellos``); everything it does with its sockets happens on its thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from encoders.shared import zmqio
from encoders.shared.messages import (
    Ack,
    Bye,
    EndOfStream,
    Frame,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    Ready,
    Refused,
    Stop,
    Welcome,
)


@dataclass
class Peer:
    identity: bytes
    hello: Hello
    heard: float
    ready: bool = False


@dataclass
class Seen:
    """What the core saw, for the test to look at (read under ``FakeCore.lock``)."""

    hellos: list[Hello] = field(default_factory=list)
    readies: list[Ready] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    byes: int = 0
    refused: int = 0


class FakeCore:
    def __init__(self, heartbeat_s: float = 0.25, misses: int = 3):
        self.ctx = zmq.Context()
        self.router = zmqio.open_socket(self.ctx, zmq.ROUTER, "tcp://127.0.0.1:0", bind=True, linger=0)
        self.frames = zmqio.open_socket(self.ctx, zmq.XPUB, "tcp://127.0.0.1:0", bind=True, linger=0)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.frames_endpoint = self.frames.getsockopt_string(zmq.LAST_ENDPOINT)
        self.heartbeat_s, self.misses = heartbeat_s, misses
        self.name = "core-1"
        self.lock = threading.Lock()
        self.seen = Seen()
        self.acked: dict[str, tuple[int, bool]] = {}  # stream -> (highest seq acknowledged, ended)
        self.held: list[Message] = []  # records and ends not yet acknowledged, oldest first
        self.ignore_acks = False  # hold (and send again) records even once acknowledged
        self.welcome_run: str | None = None  # what Welcome.run says; None: the run of the last Ready
        self.last_run = ""
        self.subscribed = threading.Event()
        self._peer: Peer | None = None
        self._commands: queue.Queue[Callable[[], object]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-core", daemon=True)
        self._thread.start()

    # -- what a test does ------------------------------------------------------------------------

    def record(self, rec: MetricsRecord) -> None:
        """Hold a record for the recorder and send it (stamped with this life of the core)."""
        self._do(lambda: self._hold(rec))

    def end(self, eos: EndOfStream) -> None:
        self._do(lambda: self._hold(eos))

    def frame(self, frame: Frame) -> None:
        self._do(lambda: zmqio.send(self.frames, frame, topic=True))

    def send_raw(self, parts: list[bytes]) -> None:
        """Parts to the recorder as they are (a message that does not decode)."""
        self._do(lambda: self._peer and self.router.send_multipart([self._peer.identity, *parts]))

    def resend(self, msg: Message) -> None:
        """A message to the recorder, not held (a record sent twice)."""
        self._do(lambda: self._send(msg))

    def stop(self, reason: str = "the pipeline stops") -> None:
        self._do(lambda: self._send(Stop(reason)))

    def restart(self, name: str, *, forget: bool = False, welcome_run: str | None = None) -> None:
        """A new life of the core: it knows no session (the recorder is asked to say Hello again).
        ``forget``: the records it held are gone too (a core with no state folder)."""

        def restart() -> None:
            self.name, self._peer = name, None
            if forget:
                self.held.clear()
            self.welcome_run = welcome_run

        self._do(restart)

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        if not self.subscribed.wait(timeout):
            raise AssertionError("the recorder never subscribed to frames")

    def wait_acked(self, stream: str, seq: int, *, ended: bool = False, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = self.acked.get(stream)
            if got is not None and got[0] >= seq and (got[1] or not ended):
                return
            time.sleep(0.02)
        raise AssertionError(f"no ack of {stream} up to {seq}{' (ended)' if ended else ''}: got {got}")

    def joined(self) -> bool:
        with self.lock:
            return self._peer is not None and self._peer.ready

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.router.close(0)
        self.frames.close(0)
        self.ctx.term()

    # -- its thread ---------------------------------------------------------------------------

    def _do(self, command: Callable[[], object]) -> None:
        self._commands.put(command)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.frames, zmq.POLLIN)
        next_beat = 0.0
        while not self._stop.is_set():
            ready = dict(poller.poll(10))
            if self.frames in ready and self.frames.recv() == b"\x01frame/":
                self.subscribed.set()
            while self.router in ready:
                try:
                    msg, identity = zmqio.receive(self.router, routed=True, flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                if identity is not None and msg is not None:
                    self._take(identity, msg)
            while True:
                try:
                    self._commands.get_nowait()()
                except queue.Empty:
                    break
            now = time.monotonic()
            peer = self._peer
            if peer is not None and now - peer.heard > self.heartbeat_s * self.misses:
                self._peer = None  # silent for too long: gone
            elif peer is not None and now >= next_beat:
                self._send(Heartbeat())
                next_beat = now + self.heartbeat_s

    def _take(self, identity: bytes, msg: Message) -> None:
        peer = self._peer
        now = time.monotonic()
        if isinstance(msg, Hello):
            with self.lock:
                self.seen.hellos.append(msg)
            if peer is not None and peer.identity != identity and not msg.takeover:
                with self.lock:
                    self.seen.refused += 1
                self._reply(identity, Refused("a recorder is connected already"))
                return
            if peer is not None and peer.identity != identity:
                self._send(Stop("another recorder takes over"))
            self._peer = Peer(identity, msg, now)
            run = self.last_run if self.welcome_run is None else self.welcome_run
            self._send(Welcome(self.name, self.heartbeat_s, self.misses, run=run, frames=self.frames_endpoint))
            return
        if peer is None or peer.identity != identity:
            if not isinstance(msg, Bye):
                self._reply(identity, Refused("unknown session", rejoin=True))
            return
        peer.heard = now
        if isinstance(msg, Ready):
            with self.lock:
                self.seen.readies.append(msg)
            self.last_run, self.welcome_run = msg.run, None
            peer.ready = True
            for held in list(self.held):
                self._send(held)
        elif isinstance(msg, Ack):
            with self.lock:
                self.seen.acks.append(msg)
                old = self.acked.get(msg.stream, (-1, False))
                self.acked[msg.stream] = (max(old[0], msg.seq), msg.ended if msg.seq >= old[0] else old[1])
            if not self.ignore_acks:
                self.held = [m for m in self.held if not _covered(m, msg)]
        elif isinstance(msg, Bye):
            with self.lock:
                self.seen.byes += 1
            self._peer = None

    def _reply(self, identity: bytes, msg: Message) -> None:
        try:
            zmqio.send(self.router, msg, prefix=[identity], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _hold(self, msg: Message) -> None:
        if isinstance(msg, MetricsRecord) and not msg.core:
            msg.core = self.name
        self.held.append(msg)
        if self._peer is not None and self._peer.ready:
            self._send(msg)

    def _send(self, msg: Message) -> None:
        if self._peer is not None:
            try:
                zmqio.send(self.router, msg, prefix=[self._peer.identity], flags=zmq.NOBLOCK)
            except zmq.ZMQError:  # its connection has gone (the recorder exited): it times out
                pass


def _covered(msg: Message, ack: Ack) -> bool:
    if isinstance(msg, MetricsRecord):
        return msg.stream == ack.stream and msg.seq <= ack.seq
    if isinstance(msg, EndOfStream):
        return msg.stream == ack.stream and ack.ended and msg.last_seq <= ack.seq
    return False
