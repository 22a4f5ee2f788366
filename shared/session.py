"""Sessions with the core (docs/PROTOCOL.md): Hello and Welcome, heartbeats, silence, rejoining.

Both sides live here, so that they keep the same rules:

- ``CoreSession`` is a peer's one connection to the core (a DEALER socket whose identity is
  random for the life of the process). Its owner polls ``sock`` with its other sockets,
  hands what arrives to ``take()`` (session messages are handled here, the others returned)
  and calls ``tick(now)`` at least once a heartbeat.
- ``Sessions`` is the core's table of the peers it has welcomed: when each was last heard
  and last sent to, who is due a heartbeat, who has gone quiet for too long.

A Hello always starts a new life of a session: whatever the core had handed the session
before is given up. A peer says Hello when it starts, when the core asks it to (it does
not know the session: it expired, or the core restarted), and after it has heard nothing
for the heartbeat timeout. A TCP connection that ZeroMQ re-establishes underneath is not a
new session, so nothing is granted twice for what a peer still holds.

Time is passed in (``now``, ``time.monotonic()``), so tests drive both sides without
sleeping.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from . import keys as curve
from . import messages, zmqio
from .keys import CurveKeys
from .messages import HEADER_MAX_BYTES, PROTOCOL, Bye, Heartbeat, Hello, Message, Refused, Role, Welcome

if TYPE_CHECKING:
    from .settings import CoreConnection

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # a side that has sent nothing else for this long sends a Heartbeat
MISSES = 3  # heartbeats missed in a row before the other side counts as gone
NO_ANSWER_REPEAT_S = 30.0  # how often "no answer from the core" is said again


def process_name() -> str:
    """host-pid: how logs name this process on the other side."""
    return f"{socket.gethostname()}-{os.getpid()}"


# -- the peer's side ----------------------------------------------------------------------------


class SessionRefused(RuntimeError):
    """The core refused this peer for good (a second recorder, another protocol, a limit)."""


class CoreSession:
    """A peer's session with the core: Hello until welcomed, heartbeats, and Hello again after silence.

    ``hello()`` makes the Hello to send (called each time: an ingest reports what it could not
    deliver meanwhile). ``on_join(welcome)`` runs when the core welcomes a new life of the
    session, ``on_lost()`` when the core has been silent for the timeout (the peer gives up
    what the core had handed it). ``largest_part``: the largest message part the core sends this
    peer (messages.largest_part: a worker's frames, the recorder's records carry pictures); a
    larger one drops the connection (zmq.MAXMSGSIZE). ``zmtp_heartbeats``: ZeroMQ's own heartbeats on
    the socket, which replace a dead TCP link, but also drop the link of a peer that was paused or
    is behind in reading (False for the recorder: recorder/main.py says why). Without them, a TCP
    link whose data goes unacknowledged for the session's timeout is dropped by the kernel and
    connected again (zmqio's ``unacked_s``): a paused core's kernel still acknowledges the little a
    session sends, a dead link or machine does not. (Not on the core's side: Linux counts a peer's
    zero window against that timeout too, and a recorder behind in reading shows one by design.) A Refused without
    ``rejoin`` or ``retry`` raises SessionRefused from ``take``. A service opens its session with ``from_settings``.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        hello: Callable[[], Hello],
        *,
        setting: str = "ENCODERS_CORE",
        heartbeat_s: float = HEARTBEAT_S,
        misses: int = MISSES,
        on_join: Callable[[Welcome], None] = lambda welcome: None,
        on_lost: Callable[[], None] = lambda: None,
        counters: dict | None = None,
        sndhwm: int | None = None,
        rcvhwm: int | None = None,
        keys: CurveKeys | None = None,
        largest_part: int = HEADER_MAX_BYTES,
        zmtp_heartbeats: bool = True,
    ) -> None:
        self.endpoint, self.setting, self.keys = endpoint, setting, keys
        self.hello, self.on_join, self.on_lost = hello, on_join, on_lost
        self.heartbeat_s, self.timeout_s = heartbeat_s, heartbeat_s * misses
        self.counters = counters if counters is not None else {}
        self.identity = uuid.uuid4().hex.encode()
        self.sock = zmqio.open_socket(
            ctx,
            zmq.DEALER,
            endpoint,
            bind=False,
            identity=self.identity,
            sndhwm=sndhwm,
            rcvhwm=rcvhwm,
            heartbeat_s=heartbeat_s if zmtp_heartbeats else None,
            unacked_s=None if zmtp_heartbeats else self.timeout_s,
            immediate=True,
            max_message_bytes=largest_part,
            curve=keys,
        )
        self.welcome: Welcome | None = None  # of the current life; None while not joined
        self.lives = 0  # Welcomes received
        self._last_heard = self._last_sent = self._hello_at = 0.0
        self._hello_queued = False  # whether the last Hello found a connection to go to
        self._waiting_since = 0.0  # when the core last went unanswering (start, or a life lost)
        self._next_warning = 0.0
        self._retry_at: float | None = None

    @classmethod
    def from_settings(
        cls,
        ctx: zmq.Context,
        cfg: CoreConnection,
        role: Role,
        hello: Callable[[], Hello] | None = None,
        **options: Any,
    ) -> CoreSession:
        """A service's session in ``role`` as its settings say (the core, heartbeats, the role's keys);
        ``hello``: default, the role's own; ``options``: the constructor's. StartupError when the
        address does not parse or the keys cannot be read: before anything is started."""
        return cls(
            ctx,
            cfg.core,
            hello or (lambda: Hello(role, process_name(), PROTOCOL)),
            heartbeat_s=cfg.heartbeat_s,
            misses=cfg.heartbeat_misses,
            keys=curve.client(cfg.keys, role),
            **options,
        )

    @property
    def joined(self) -> bool:
        return self.welcome is not None

    def start(self, now: float) -> None:
        """Say Hello (and start counting the silence that would make us say it again)."""
        self._say_hello(now)
        self._waiting_since = now
        self._next_warning = now + self.timeout_s

    def send(self, msg: Message, now: float, *, flags: int = 0) -> None:
        zmqio.send(self.sock, msg, flags=flags)
        self._last_sent = now

    def take(self, now: float, limit: int = 1000) -> Iterator[Message]:
        """The messages waiting, without waiting for any: session ones handled, the others yielded."""
        for msg in zmqio.receive_waiting(self.sock, limit=limit, counters=self.counters, copy=False):
            self._last_heard = now
            if isinstance(msg, Welcome):
                self._welcomed(msg, now)
            elif isinstance(msg, Refused):
                self._refused(msg, now)
            elif isinstance(msg, Bye):
                log.warning("the core at %s ended this session (%s)", self.endpoint, msg.reason or "no reason given")
                self._lose(now)
            elif not isinstance(msg, Heartbeat):
                if self.joined:
                    yield msg
                else:
                    self.counters["messages_before_welcome"] = self.counters.get("messages_before_welcome", 0) + 1

    def behind(self, now: float) -> None:
        """The caller leaves the messages waiting unread for now (it has no room for them: the recorder
        while its database catches up). They are the core's signs of life: it sent them, and this side
        is the one that is slow, so the core is not counted silent while they wait. Its silence counts
        again from when they are read (at most the records the core sends unacknowledged: its window)."""
        if self.joined and self.sock.poll(0, zmq.POLLIN):
            self._last_heard = now

    def alive(self, now: float) -> bool:
        """Joined, and the core heard from within the heartbeat timeout (tick counts it gone past that)."""
        return self.joined and now - self._last_heard <= self.timeout_s

    def tick(self, now: float) -> None:
        """Heartbeat when due; notice a silent core; say Hello again when it is time."""
        if self.joined:
            if now - self._last_heard > self.timeout_s:
                log.warning(
                    "the core at %s (%s) has been silent for %.0f s: counting it gone, saying Hello again",
                    self.endpoint,
                    self.setting,
                    now - self._last_heard,
                )
                self._lose(now)
                self._say_hello(now)
            elif now - self._last_sent >= self.heartbeat_s:
                try:
                    self.send(Heartbeat(), now, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # no live connection (IMMEDIATE), or the queue is full: the silence shows
            return
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._say_hello(now)
        elif self._retry_at is None and (not self._hello_queued or now - self._hello_at > self.timeout_s):
            # Said again at every tick while no connection is up to take it (a TCP connect takes a
            # moment: the Hello said at start finds none), and after the timeout: it may have gone to
            # a core that was not there yet.
            self._say_hello(now)
        if now >= self._next_warning:
            log.warning(
                "no answer from the core at %s (%s) for %.0f s: is the metrics service running there, and is "
                "this the address this machine reaches it at?%s",
                self.endpoint,
                self.setting,
                now - self._waiting_since,
                " With keys (ENCODERS_KEYS): does the core have them on, and this role's key in its allowed/?"
                if self.keys is not None
                else "",
            )
            self._next_warning = now + NO_ANSWER_REPEAT_S

    def close(self, now: float, reason: str = "") -> None:
        """Say Bye (if joined: the core then need not wait for the timeout) and close the socket."""
        if self.joined:
            try:
                self.send(Bye(reason), now, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        self.sock.close()

    # -- internals ------------------------------------------------------------------------------

    def _say_hello(self, now: float) -> None:
        hello = self.hello()
        try:
            self.send(hello, now, flags=zmq.NOBLOCK)
            self._hello_queued = True
        except zmq.Again:
            self._hello_queued = False  # nobody to queue it to yet: the next tick says it again
        self._hello_at = now

    def _welcomed(self, welcome: Welcome, now: float) -> None:
        if self.joined:
            return  # the answer to a Hello said twice: the life has begun already
        self.welcome = welcome
        self.lives += 1
        self._next_warning = float("inf")
        log.info("joined the core at %s (core %s)", self.endpoint, welcome.core)
        self.on_join(welcome)

    def _refused(self, refused: Refused, now: float) -> None:
        if refused.rejoin and not self.joined and self._hello_queued and now - self._hello_at <= self.timeout_s:
            # The answer to a message sent before our Hello, which is on its way (the core answers in order:
            # its Welcome comes after). Saying Hello again would begin a second life after that Welcome, which
            # ends the first and costs what it was given (a worker's frames).
            self.counters["rejoins_before_welcome"] = self.counters.get("rejoins_before_welcome", 0) + 1
            return
        if refused.rejoin:
            log.info(
                "the core at %s does not know this session (%s): saying Hello again", self.endpoint, refused.reason
            )
            self._lose(now)
            self._say_hello(now)
        elif refused.retry:
            log.warning("the core at %s refused us for now: %s; trying again", self.endpoint, refused.reason)
            self._lose(now)
            self._retry_at = now + self.timeout_s
        else:
            raise SessionRefused(f"the core at {self.endpoint} refused this {self.hello().role}: {refused.reason}")

    def _lose(self, now: float) -> None:
        if self.welcome is None:
            return
        self.welcome = None
        self._waiting_since = now
        self._next_warning = now + self.timeout_s
        self.on_lost()


# -- the core's side ------------------------------------------------------------------------


@dataclass
class Peer:
    """A welcomed session."""

    identity: bytes
    hello: Hello
    since: float
    last_heard: float
    last_sent: float
    state: dict = field(default_factory=dict)  # what the core's modules keep for this peer

    @property
    def role(self) -> str:
        return self.hello.role

    @property
    def name(self) -> str:
        return self.hello.name


class Sessions:
    """The core's peers, by identity: welcomed, heard, due a heartbeat, gone."""

    def __init__(self, heartbeat_s: float = HEARTBEAT_S, misses: int = MISSES) -> None:
        self.heartbeat_s, self.timeout_s = heartbeat_s, heartbeat_s * misses
        self.peers: dict[bytes, Peer] = {}
        self.listening_since = float("-inf")  # a peer's silence counts from here at the earliest (resumed)

    def welcome(self, identity: bytes, hello: Hello, now: float) -> tuple[Peer, Peer | None]:
        """A new life of this identity's session: (the new peer, the life it ended, if any)."""
        old = self.peers.pop(identity, None)
        peer = Peer(identity, hello, since=now, last_heard=now, last_sent=now)
        self.peers[identity] = peer
        return peer, old

    def heard(self, identity: bytes, now: float) -> Peer | None:
        """The peer of this identity, noted as heard now; None if the core does not know it."""
        peer = self.peers.get(identity)
        if peer is not None:
            peer.last_heard = now
        return peer

    def sent(self, peer: Peer, now: float) -> None:
        peer.last_sent = now

    def send(self, router: zmq.Socket, identity: bytes, msg: Message | Sequence[Any], now: float) -> bool:
        """To one session on the core's ROUTER without waiting, noted as sent (its heartbeat is not due):
        False if its connection is gone or full. ``msg``: a message, or its parts encoded already."""
        parts = messages.encode(msg) if isinstance(msg, Message) else list(msg)
        try:
            zmqio.send_parts(router, [identity, *parts], zmqio.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False
        peer = self.peers.get(identity)
        if peer is not None:
            self.sent(peer, now)
        return True

    def remove(self, identity: bytes) -> Peer | None:
        return self.peers.pop(identity, None)

    def resumed(self, now: float) -> None:
        """The core did not run until now (paused, starved of CPU): what peers sent meanwhile is not
        read yet, so their silence counts from now, and each is due a heartbeat at once (it heard
        nothing meanwhile). A peer that really went away is counted gone a timeout from now.

        (Silence counts from a peer's last message at most twice the timeout back, whatever: a core
        whose every turn stalls would otherwise never count anyone gone.)"""
        self.listening_since = now
        for peer in self.peers.values():
            peer.last_sent = float("-inf")

    def expired(self, now: float) -> list[Peer]:
        """Peers silent for the timeout, removed from the table."""
        gone = [
            p
            for p in self.peers.values()
            if now - max(p.last_heard, self.listening_since) > self.timeout_s or now - p.last_heard > 2 * self.timeout_s
        ]
        for peer in gone:
            del self.peers[peer.identity]
        return gone

    def heartbeats_due(self, now: float) -> list[Peer]:
        return [p for p in self.peers.values() if now - p.last_sent >= self.heartbeat_s]

    def of_role(self, role: str) -> list[Peer]:
        return [p for p in self.peers.values() if p.role == role]

    def who(self, identity: bytes) -> str:
        """How log lines name a session: its role and name, or its identity if it is not (or no longer) welcomed."""
        peer = self.peers.get(identity)
        return f"{peer.role} {peer.name}" if peer is not None else f"session {identity.hex()[:8]}"


def hello_problem(hello: Hello) -> str | None:
    """Why the core cannot take this Hello whatever its state, or None."""
    if hello.protocol != PROTOCOL:
        return f"protocol {hello.protocol}, but this core speaks protocol {PROTOCOL}: run the same encoders version"
    if hello.role == "ingest" and hello.stream is None:
        return "an ingest's Hello names no stream"
    if hello.role == "worker" and hello.capacity < 1:
        return "a worker's Hello offers no capacity"
    if hello.role == "worker" and (not hello.model or hello.dim < 1):
        return "a worker's Hello names no model or no embedding length (dim)"
    return None
