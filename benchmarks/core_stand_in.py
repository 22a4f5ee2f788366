"""The core as a recorder sees it, played by the recorder process benchmark (db_process.py).

Only the core's side of the recorder's session (docs/PROTOCOL.md, "Sessions" and "The
recorder: acknowledged delivery"), on a ROUTER bound to a free local port: it welcomes the
recorder's Hello, waits for its Ready, sends it records already encoded (so that the clock
measures the recorder, not this sender) with at most the real core's window of them
unacknowledged (services/metrics/delivery.py: WINDOW, and its rules of what an Ack covers),
reads the cumulative Acks, sends a Heartbeat whenever it has sent nothing else for a
heartbeat, and at the end says Stop and waits for the recorder's Bye and its exit.

Not the real core: nothing is held past a session or sent again, and a second Hello after the
Ready fails the benchmark (the recorder lost its session: its figure would mean nothing).
tests/integration/fake_core.py plays the same part for the recorder's tests.
"""

from __future__ import annotations

import subprocess
import time
from collections import deque
from dataclasses import dataclass

import zmq

from encoders.services.metrics.delivery import WINDOW, Held, covered, held
from encoders.shared import messages, zmqio
from encoders.shared.messages import Ack, Bye, Heartbeat, Hello, Message, Ready, Stop, Welcome
from encoders.shared.session import HEARTBEAT_S, MISSES

WAIT_MS = 100  # longest wait for a message while nothing can be sent: heartbeats and checks stay on time
FULL_MS = 1  # wait while the recorder's connection is full (its queue takes a few ms to drain)


@dataclass(slots=True)
class Prepared:
    """A record encoded ahead of time, and where it stands in its stream (what an Ack covers)."""

    held: Held
    parts: list


def prepare(msg: Message) -> Prepared:
    """A StreamStart, MetricsRecord or EndOfStream, encoded for the wire."""
    h = held(msg)
    h.msg = None  # the parts are what is sent
    return Prepared(h, messages.encode(msg))


class CoreStandIn:
    """``CoreStandIn()``; start the recorder with ``--core endpoint``; then ``wait_ready(proc)``,
    ``deliver(proc, prepared)``, ``stop(proc)``; ``close()``. Each wait raises RuntimeError when
    the recorder process exits or the time given runs out."""

    def __init__(self, name: str = "bench-core", window: int = WINDOW, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.name, self.window, self.heartbeat_s = name, window, heartbeat_s
        self.ctx = zmq.Context()
        self.router = zmqio.open_socket(self.ctx, zmq.ROUTER, "tcp://127.0.0.1:0", bind=True, linger=0)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.recorder: bytes | None = None  # the recorder's session (its identity), once it said Hello
        self.ready: Ready | None = None
        self.bye = False
        self.acks: dict[str, tuple[int, bool]] = {}  # stream -> its highest Ack (seq, ended)
        self.inflight: dict[str, deque[Held]] = {}  # per stream: sent, not yet acknowledged, in order
        self.n_inflight = 0
        self.last_ack_at = 0.0  # time.perf_counter() of the last Ack that covered something
        self._last_sent = 0.0  # time.monotonic() of the last message to the recorder

    # -- the session's three phases ----------------------------------------------------------------

    def wait_ready(self, proc: subprocess.Popen, timeout_s: float = 120.0) -> Ready:
        """Welcome the recorder's Hello; its Ready (the run it records)."""
        deadline = time.monotonic() + timeout_s
        while self.ready is None:
            self._step(proc, WAIT_MS, deadline, "the recorder's Ready")
        return self.ready

    def deliver(self, proc: subprocess.Popen, prepared: list[Prepared], timeout_s: float = 600.0) -> float:
        """Send ``prepared`` in order, at most ``window`` unacknowledged; seconds from the first sent
        to the Ack that made the last durable. Done when every one is covered by an Ack, an end of
        stream by one that says ``ended``."""
        assert self.recorder is not None and self.ready is not None, "wait_ready first"
        deadline = time.monotonic() + timeout_s
        started: float | None = None
        i = 0
        while i < len(prepared) or self.n_inflight:
            full = False
            while i < len(prepared) and self.n_inflight < self.window:
                p = prepared[i]
                if not self._send_parts(p.parts):
                    full = True  # the connection's queues are full: the recorder has not taken them yet
                    break
                if started is None:
                    started = time.perf_counter()
                self.inflight.setdefault(p.held.stream, deque()).append(p.held)
                self.n_inflight += 1
                i += 1
            self._step(proc, FULL_MS if full else WAIT_MS, deadline, "the recorder's acknowledgements")
        assert started is not None, "nothing to deliver"
        return self.last_ack_at - started

    def stop(self, proc: subprocess.Popen, timeout_s: float = 120.0) -> int:
        """Stop (the pipeline stops): the recorder finishes its run, says Bye and exits; its exit code."""
        deadline = time.monotonic() + timeout_s
        while not self._send(Stop("the benchmark is over")):
            self._step(proc, FULL_MS, deadline, "room to send Stop")
        while not self.bye:
            self._step(proc, WAIT_MS, deadline, "the recorder's Bye")
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.router.close(0)
        self.ctx.term()

    # -- internals ---------------------------------------------------------------------------------

    def _step(self, proc: subprocess.Popen, wait_ms: int, deadline: float, waiting: str) -> None:
        """Take what arrived (waiting up to ``wait_ms`` for it), heartbeat when due, check on the process."""
        if self.router.poll(wait_ms):
            while True:
                try:
                    msg, identity = zmqio.receive(self.router, routed=True, flags=zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                if msg is None or identity is None:
                    raise RuntimeError("the recorder sent a message that does not decode")
                self._take(identity, msg)
        now = time.monotonic()
        if self.recorder is not None and not self.bye and now - self._last_sent >= self.heartbeat_s:
            self._send(Heartbeat())
        if proc.poll() is not None and not self.bye:
            raise RuntimeError(f"the recorder exited ({proc.returncode}) while the core waited for {waiting}")
        if now > deadline:
            raise RuntimeError(f"no {waiting} in time")

    def _take(self, identity: bytes, msg: Message) -> None:
        if isinstance(msg, Hello):
            if self.ready is not None:
                raise RuntimeError("the recorder said Hello again: it counted the core gone and lost its session")
            self.recorder = identity  # a Hello said twice before the Welcome arrived: welcomed twice
            self._send(Welcome(self.name, self.heartbeat_s, MISSES))
        elif identity != self.recorder:
            raise RuntimeError(f"a {type(msg).__name__} from a session this core never welcomed")
        elif isinstance(msg, Ready):
            self.ready = msg
        elif isinstance(msg, Ack):
            self._acked(msg)
        elif isinstance(msg, Bye):
            self.bye = True
        # a Heartbeat: only a sign of life, which every message is

    def _acked(self, ack: Ack) -> None:
        """A cumulative Ack: what it covers of the stream leaves the window (delivery.py's rules)."""
        highest = max(self.acks.get(ack.stream, (-2, False)), (ack.seq, ack.ended))
        self.acks[ack.stream] = highest
        queue = self.inflight.get(ack.stream)
        while queue and covered(queue[0], highest):
            queue.popleft()
            self.n_inflight -= 1
            self.last_ack_at = time.perf_counter()

    def _send(self, msg: Message) -> bool:
        return self._send_parts(messages.encode(msg))

    def _send_parts(self, parts: list) -> bool:
        """To the recorder without waiting, as the core sends: False if its connection's queues are full."""
        assert self.recorder is not None
        try:
            self.router.send_multipart([self.recorder, *parts], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False  # its connection is gone: the process has exited, which the next step says
        self._last_sent = time.monotonic()
        return True
