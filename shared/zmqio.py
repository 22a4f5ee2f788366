"""ZeroMQ sockets as every service opens them, and the message send/receive helpers."""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import zmq

from . import messages
from .complaints import Complaints
from .keys import CurveKeys
from .messages import DecodeError, Message
from .runtime import StartupError
from .settings import split_addrs

log = logging.getLogger(__name__)
complain = Complaints(log, "the service's counters (bad_messages)")  # bad input: logged once, then counted

# How long a closing socket may still try to deliver what it holds (ms). Long enough for
# a final flush to a live peer, short enough that a dead peer never blocks shutdown.
LINGER_MS = 2000
# What CurveZMQ adds to each part on the wire (its MESSAGE command: a name, a nonce, a MAC and
# flags, 33 bytes), which zmq.MAXMSGSIZE counts too: a socket takes its largest legal part and these.
CURVE_BYTES = 64
# The largest message a publisher's peers send it: a subscription, a topic prefix (a kind and a
# stream name: under 80 bytes); CurveZMQ's handshake commands (INITIATE, the largest, about 300
# bytes with its metadata) pass through the same bound.
SUBSCRIPTION_MAX_BYTES = 1024


def open_socket(
    ctx: zmq.Context,
    kind: int,
    endpoints: str | Iterable[str],
    *,
    bind: bool,
    sndhwm: int | None = None,
    rcvhwm: int | None = None,
    subscribe: Iterable[bytes] = (),
    identity: bytes | None = None,
    linger: int = LINGER_MS,
    heartbeat_s: float | None = None,
    unacked_s: float | None = None,
    immediate: bool = False,
    max_message_bytes: int | None = None,
    curve: CurveKeys | None = None,
) -> zmq.Socket:
    """Create a socket, set its options, then bind or connect it to every endpoint.

    ``endpoints``: one, several in a list, or several in one comma-separated string (as
    settings hold them). A TCP bind on port ``*`` or 0 takes a port the system picks; the
    address it got is logged, for whoever connects from elsewhere. StartupError when an
    endpoint cannot be bound or does not parse.

    ``heartbeat_s``: ZMTP heartbeats (ZeroMQ's own, below the messages), so that a TCP
    connection that died without a word is dropped and re-established within three of them.
    ``unacked_s``: the kernel drops a TCP connection whose data has gone unacknowledged this long
    (zmq.TCP_MAXRT, TCP_USER_TIMEOUT on Linux), and ZeroMQ connects again: a dead link noticed
    without ZMTP heartbeats (for sockets that must not have them, session.py says which), where
    TCP's own retries would take some 15 minutes.
    ``immediate``: queue messages only to a connection that is up (a session's Hello must
    not wait in a queue for a core that is not there, then arrive stale). ``max_message_bytes``:
    the largest part of a message a peer may send (zmq.MAXMSGSIZE, which ZeroMQ applies to each
    part, with CURVE_BYTES more for CurveZMQ's): a peer that sends a larger one is disconnected
    before it is read (messages.largest_part; for a publisher, SUBSCRIPTION_MAX_BYTES). ``curve``:
    the socket's CurveZMQ keys (shared/keys.py), a server's or a client's.
    """
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger)
    if sndhwm is not None:
        sock.setsockopt(zmq.SNDHWM, sndhwm)
    if rcvhwm is not None:
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if heartbeat_s is not None:
        ivl = max(1, int(heartbeat_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * ivl)
    if unacked_s is not None:
        sock.setsockopt(zmq.TCP_MAXRT, max(1, int(unacked_s * 1000)))
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if max_message_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes + CURVE_BYTES)
    if curve is not None:
        curve.apply(sock)
    if kind == zmq.SUB:
        for prefix in subscribe:
            sock.setsockopt(zmq.SUBSCRIBE, prefix)
    if kind == zmq.ROUTER:
        # Sending to a worker that has gone raises EHOSTUNREACH instead of vanishing silently.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    for ep in split_addrs(endpoints) if isinstance(endpoints, str) else endpoints:
        try:
            sock.bind(ep) if bind else sock.connect(ep)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise StartupError(f"cannot {'bind' if bind else 'connect'} {ep}: {exc}") from None
        if bind:
            actual = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            _BOUND.setdefault(sock, []).append(actual)
            if ep.startswith("tcp://") and ep.rsplit(":", 1)[-1] in ("*", "0"):
                log.info("listening on %s", actual)
    return sock


# What each socket open_socket bound is listening on: the port a wildcard bind got included.
_BOUND: weakref.WeakKeyDictionary[zmq.Socket, list[str]] = weakref.WeakKeyDictionary()


def poll_ms(seconds: float) -> int:
    """A wait until a deadline ``seconds`` away, as a poll timeout (whole milliseconds): rounded up. Rounded
    down, the last millisecond before the deadline becomes polls of 0 ms, a loop spinning on the CPU until
    it (seen in the ingest: about ten turns a frame, waiting to announce its captures)."""
    return math.ceil(max(0.0, seconds) * 1000)


def bound(sock: zmq.Socket) -> str:
    """Every endpoint ``sock`` listens on, comma-separated, with the ports wildcard binds got
    (what a peer is told to connect to: docs/PROTOCOL.md, Welcome)."""
    return ",".join(_BOUND.get(sock, []))


def check_connect_endpoints(ctx: zmq.Context, endpoints: str | Iterable[str]) -> None:
    """StartupError if an endpoint to connect to does not parse, before anything else is started.

    A SUB socket with no subscription is connected and closed at once: it receives nothing,
    so no peer hands it a message that would then be lost (a PULL would take its share).
    """
    probe = open_socket(ctx, zmq.SUB, endpoints, bind=False, linger=0)
    probe.close(0)


# pyzmq's flags as plain ints, worked out once: its enums cost an enum.Flag.__or__ (about 2 us)
# for every part that send_multipart sends ("SNDMORE | flags"), which the core's profile showed.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)


def send(sock: zmq.Socket, msg: Message, *, topic: bool = False, flags: int = 0, prefix: list | None = None) -> None:
    """Send one message; ``prefix`` carries ROUTER routing frames. ``flags``: NOBLOCK or 0."""
    parts = messages.encode(msg, with_topic=topic)
    if prefix:
        parts = list(prefix) + parts
    send_parts(sock, parts, flags)


def send_parts(sock: zmq.Socket, parts: Sequence[Any], flags: int = 0) -> None:
    """send_multipart's work, with int flags (above), without a copy; a part that is neither
    bytes nor a buffer cannot occur: encode makes bytes and memoryviews only."""
    flags = int(flags)
    more = flags | SNDMORE
    send_part = sock.send
    for part in parts[:-1]:
        send_part(part, more, copy=False)
    send_part(parts[-1], flags, copy=False)


def recv_parts(sock: zmq.Socket, flags: int = 0, *, copy: bool = False) -> list[Any]:
    """recv_multipart's work. Without a copy, each part's ``more`` says whether another follows,
    where pyzmq's recv_multipart asks getsockopt(RCVMORE) after each part (an enum conversion each:
    4.3 us against 1.7 for a three-part message, measured), the send side's cost (``send_parts``)."""
    if copy:
        return sock.recv_multipart(flags, copy=True)
    frame = sock.recv(flags, copy=False)
    parts = [frame]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        parts.append(frame)
    return parts


def receive(
    sock: zmq.Socket,
    *,
    topic: bool = False,
    routed: bool = False,
    counters: dict | None = None,
    flags: int = 0,
    copy: bool = False,
) -> tuple[Message | None, bytes | None]:
    """Receive one message (the caller knows one is waiting, or passes zmq.NOBLOCK and
    catches zmq.Again).

    ``copy``: take the parts as bytes; for small messages (embeddings, records: about 2 KB)
    that is cheaper than pyzmq's zero-copy Frame objects, which pay off for JPEG frames.

    Returns (message, sender identity for ROUTER sockets). A message that does not decode
    is logged, counted in ``counters['bad_messages']`` and returned as None: never a crash.
    """
    parts = recv_parts(sock, flags, copy=copy)
    sender = None
    if routed:
        sender, parts = part_bytes(parts[0]), parts[1:]
    try:
        return messages.decode(parts, with_topic=topic), sender
    except DecodeError as exc:
        if counters is not None:
            counters["bad_messages"] = counters.get("bad_messages", 0) + 1
        complain("bad_messages", "dropped a message that does not decode: %s", exc)
        return None, sender


def receive_waiting(
    sock: zmq.Socket,
    *,
    limit: int,
    until: float = 0.0,
    topic: bool = False,
    counters: dict | None = None,
    copy: bool = False,
) -> Iterator[Message]:
    """The messages already waiting on ``sock``, never waiting for one: at most ``limit`` of
    them, or, until ``until`` (time.monotonic()), however many there are. Ones that do not
    decode are counted and left out. ``copy`` as for ``receive``."""
    n = 0
    while n < limit or time.monotonic() < until:
        n += 1
        try:
            # A non-blocking receive, not a look at zmq.EVENTS first: that look costs as much
            # as decoding the message (pyzmq wraps the flags in enums), for every message.
            msg, _sender = receive(sock, topic=topic, counters=counters, flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return
        if msg is not None:
            yield msg


def part_bytes(part: bytes | zmq.Frame) -> bytes:
    """A part as bytes, whether it was received as bytes or (copy=False) as a zmq.Frame."""
    return part.bytes if isinstance(part, zmq.Frame) else bytes(part)
