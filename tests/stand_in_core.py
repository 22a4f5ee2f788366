"""A stand-in for the core (the metrics service's session socket), on a thread of the test.

For the viewer's and `encoders stop`'s tests, whose peers run as real processes, in real time
(tests/ingest_worker_core.py is the ingest's and the worker's, tests/integration/fake_core.py the
recorder's, each with what its tests need):
it answers a Hello with a Welcome (naming the publishers given, as a core names the ones it
bound), heartbeats every welcomed peer, answers Stop with the Stopped given (or never, when
none is), and keeps every message it received, in order, for assertions. Not the real core:
the peers' side of the protocol is tested against this, the core's against its own tests.
"""

from __future__ import annotations

import threading
import time

import zmq

from encoders.shared import zmqio
from encoders.shared.messages import Bye, Heartbeat, Hello, Message, Stop, Stopped, Welcome


class StandInCore:
    """``StandInCore(sock, frames=..., metrics=..., stopped=...)`` on a bound ROUTER the test's
    ``sockets`` fixture owns, then ``start()``; ``close()`` stops its thread. ``endpoint``: the
    address it bound."""

    def __init__(
        self,
        sock: zmq.Socket,
        *,
        frames: str = "",
        metrics: str = "",
        stopped: Stopped | None = None,
        heartbeat_s: float = 1.0,
    ) -> None:
        self.sock = sock
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.frames, self.metrics, self.stopped = frames, metrics, stopped
        self.heartbeat_s = heartbeat_s
        self.received: list[tuple[bytes, Message]] = []
        self._peers: dict[bytes, float] = {}  # identity -> last sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-core", daemon=True)

    def start(self) -> StandInCore:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def messages(self, kind: type[Message] | None = None) -> list[Message]:
        """What it received (of one kind), heartbeats left out."""
        return [
            m for _, m in list(self.received) if not isinstance(m, Heartbeat) and (kind is None or isinstance(m, kind))
        ]

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(20):
                msg, identity = zmqio.receive(self.sock, routed=True)
                if msg is None or identity is None:
                    continue
                self.received.append((identity, msg))
                self._answer(identity, msg)
            now = time.monotonic()
            for identity, last in list(self._peers.items()):
                if now - last >= self.heartbeat_s:
                    self._send(identity, Heartbeat())

    def _answer(self, identity: bytes, msg: Message) -> None:
        if isinstance(msg, Hello):
            viewer = msg.role == "viewer"
            welcome = Welcome(
                "fake-core",
                self.heartbeat_s,
                3,
                frames=self.frames if viewer else "",
                metrics=self.metrics if viewer else "",
            )
            self._send(identity, welcome)
        elif isinstance(msg, Stop) and self.stopped is not None:
            self._send(identity, self.stopped)
        elif isinstance(msg, Bye):
            self._peers.pop(identity, None)

    def _send(self, identity: bytes, msg: Message) -> None:
        try:
            zmqio.send(self.sock, msg, prefix=[identity], flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # the peer has gone (ROUTER_MANDATORY)
            self._peers.pop(identity, None)
            return
        self._peers[identity] = time.monotonic()
