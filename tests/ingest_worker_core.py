"""A stand-in for the core (docs/PROTOCOL.md) for the ingest's and the encoder worker's tests.

``FakeCore`` runs a ROUTER in a thread of its own, so that a service in another process
keeps its session while the test waits on something else: it welcomes each Hello (with the
credit a lossless ingest is given, or refusing it for good when told to), sends heartbeats,
answers a message from a session it does not know with ``Refused(rejoin)`` as the core
does, keeps every message it received, and sends what the test hands it. It numbers nothing
and dispatches nothing: the test does. Not the real core: the peers' side of the protocol
is tested against this, the core's against its own tests.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import zmq

from encoders.shared import zmqio
from encoders.shared.messages import Bye, Heartbeat, Hello, Message, Refused, Welcome


@dataclass
class Received:
    identity: bytes
    msg: Message
    t: float  # time.monotonic() when it arrived


class FakeCore:
    """The core's ROUTER (bound by the test, handed over) served by a thread until ``close()``."""

    def __init__(
        self,
        sock: zmq.Socket,
        *,
        heartbeat_s: float = 1.0,
        misses: int = 3,
        credit: int = 0,
        refuse: str = "",
    ) -> None:
        self.sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.heartbeat_s, self.misses = heartbeat_s, misses
        self.credit = credit  # a lossless ingest's credit in each Welcome
        self.refuse = refuse  # refuse every Hello for good, saying this
        self.silent = False  # hear everything, answer nothing, no heartbeats (what the test sends still goes)
        self.known: set[bytes] = set()  # sessions welcomed (forget(): a restarted core)
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._outbox: queue.Queue[tuple[bytes | None, Message | list[bytes]]] = queue.Queue()
        self._last_peer = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-core", daemon=True)
        self._thread.start()

    # -- for the test ---------------------------------------------------------------------------

    def send(self, msg: Message | list[bytes], to: bytes | None = None) -> None:
        """Send to a session (by default the one heard from last), from the core's thread; raw parts
        (a list of bytes) go as they are, for messages that do not decode."""
        self._outbox.put((to, msg))

    def forget(self) -> None:
        """As a restarted core: every session is unknown from now on."""
        with self._lock:
            self.known.clear()

    def received(self, kind: type | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if kind is None or isinstance(r.msg, kind)]

    def messages(self, kind: type) -> list:
        return [r.msg for r in self.received(kind)]

    def wait(self, kind: type, n: int = 1, timeout: float = 15.0) -> list:
        """Once at least ``n`` messages of ``kind`` have come: all of them."""
        deadline = time.monotonic() + timeout
        while len(got := self.messages(kind)) < n:
            if time.monotonic() > deadline:
                kinds = [type(r.msg).__name__ for r in self.received()][-10:]
                raise AssertionError(f"{len(got)} of {n} {kind.__name__} came in {timeout} s; last: {kinds}")
            time.sleep(0.01)
        return got

    def close(self) -> None:
        """Stop the thread (the test's sockets fixture closes the socket)."""
        self._stop.set()
        self._thread.join(5)

    # -- the thread -----------------------------------------------------------------------------

    def _serve(self) -> None:
        next_beat = time.monotonic()
        while not self._stop.is_set():
            if self.sock.poll(10):
                while self.sock.poll(0):
                    msg, identity = zmqio.receive(self.sock, routed=True)
                    if msg is not None and identity is not None:
                        self._take(identity, msg)
            while not self._outbox.empty():
                to, out = self._outbox.get()
                self._send(to or self._last_peer, out)
            if time.monotonic() >= next_beat and not self.silent:
                next_beat = time.monotonic() + self.heartbeat_s
                with self._lock:
                    peers = list(self.known)
                for peer in peers:
                    self._send(peer, Heartbeat())

    def _take(self, identity: bytes, msg: Message) -> None:
        with self._lock:
            self._received.append(Received(identity, msg, time.monotonic()))
            self._last_peer = identity
            known = identity in self.known
        if self.silent:
            return
        if isinstance(msg, Hello):
            if self.refuse:
                self._send(identity, Refused(self.refuse))
                return
            with self._lock:
                self.known.add(identity)
            self._send(identity, Welcome("fake-core", self.heartbeat_s, self.misses, credit=self.credit))
        elif isinstance(msg, Bye):
            with self._lock:
                self.known.discard(identity)
        elif not known:
            self._send(identity, Refused("unknown session", rejoin=True))

    def _send(self, identity: bytes, msg: Message | list[bytes]) -> None:
        try:
            if isinstance(msg, list):
                self.sock.send_multipart([identity, *msg], flags=zmq.NOBLOCK)
            else:
                zmqio.send(self.sock, msg, prefix=[identity], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer has gone (ROUTER_MANDATORY), or its queue is full
