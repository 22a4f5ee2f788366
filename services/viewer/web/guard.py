"""The web viewer's door: whom it lets in, for how long, and how long a request may take.

aiohttp bounds the size of a request's headers but not the time they take, nor the number of
connections, nor who holds them: a client that opens hundreds of connections and sends each
request a byte at a time ("slowloris") holds them all. aiohttp has no setting for any of it, so
each connection's protocol (aiohttp's own RequestHandler) is wrapped in a Guard that

- closes the connection at once when its client (its remote address) holds
  ``max_per_client`` already (counted ``refused``), so that one client's idle sockets cannot
  fill the door for everyone (issue #22: 64 of them reset every other client);
- when the server holds ``max_connections``, makes room by closing the oldest connection not
  vouched for yet (below; counted ``evicted``), or, when every one is, closes the new one at
  once (counted ``refused``): a browser or a video player gets another when it retries;
- closes it when no request on it has passed the token check (any request, with no token set)
  within ``token_timeout`` seconds of the connection (counted ``token_timeouts``): a
  stranger's connections go quickly, and never hold the door against those with the token.
  A connection once vouched for stays so;
- closes it when a request's line and headers have not ended within ``header_timeout``
  seconds of the connection, or of the request's first byte (counted ``header_timeouts``).
  That deadline is the headers' only: a body is not headers;
- closes it when a request's body stops coming for ``body_timeout`` seconds (counted
  ``body_timeouts``): an upload over a slow link takes as long as it takes while it keeps
  coming (issue #22: a 1.27 MB picture sent in 15 s was cut at 11 s as a header timeout). A
  long answer (a video, an event stream) is no body coming in: it is never cut.

The Guard sees bytes; aiohttp knows which request they belong to. ``Door.watch``, the
outermost middleware, tells the Guard when a request's handler starts and returns (its body
has ended once its payload has), and ``Door.vouch``, right after the token check, that a
request carried the token. Everything else is passed through untouched, so the Guard works
over TLS too (it sees what the TLS layer has decrypted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from encoders.shared.complaints import Complaints

log = logging.getLogger("encoders.viewer.web")
complain = Complaints(log, "the web viewer's counters (/api/state)")

END_OF_HEADERS = b"\r\n\r\n"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(eq=False)
class Door:
    """What the guards share: the limits, the open connections, the counts."""

    max_connections: int
    header_timeout: float
    max_per_client: int = 16
    token_timeout: float = 5.0
    body_timeout: float = 30.0
    open: int = 0
    per_client: dict[str, int] = field(default_factory=dict)  # remote address -> its connections open
    strangers: dict[Guard, None] = field(default_factory=dict)  # not vouched for yet, oldest first
    guards: dict[Any, Guard] = field(default_factory=dict)  # transport -> its guard (for the middlewares)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("connections", "refused", "evicted", "token_timeouts", "header_timeouts", "body_timeouts"), 0
        )
    )

    @web.middleware
    async def watch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The outermost middleware: each request's start and end, for its connection's Guard."""
        guard = self.guards.get(request.transport)
        if guard is None:
            return await handler(request)
        guard.started(request)
        try:
            return await handler(request)
        finally:
            guard.finished(request)

    @web.middleware
    async def vouch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Right after the token check: this request carried the token, its connection is vouched for."""
        guard = self.guards.get(request.transport)
        if guard is not None:
            guard.vouch()
        return await handler(request)


class Guard(asyncio.Protocol):
    """One connection: the limits of its Door, then everything to ``inner`` (aiohttp's handler)."""

    def __init__(self, inner: asyncio.Protocol, door: Door, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.door = door
        self.loop = loop
        self.transport: Any = None
        self.client = "?"
        self.admitted = False  # the inner handler has the connection (and will be told it is lost)
        self.seated = False  # counted in the door's open connections
        self.vouched = False
        self.header_timer: asyncio.TimerHandle | None = None  # a request's line and headers are coming
        self.token_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.tail = b""  # the last bytes of the headers so far: END_OF_HEADERS may be split across reads
        self.in_request = False  # a request's headers have ended: its body and its answer follow
        self.request: web.Request | None = None  # the request aiohttp handles (Door.watch)
        self.handled = False  # its handler has returned
        self.body_at = 0.0  # when its body last sent a byte
        self.next_early = False  # bytes came after its body had ended: the next request's

    # -- at the door -------------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.client = client_of(transport)
        door = self.door
        mine = door.per_client.get(self.client, 0)
        if mine >= door.max_per_client:
            door.counts["refused"] += 1
            complain(
                "refused_client",
                "refused a web connection from %s: %d open from there already (ENCODERS_WEB_MAX_PER_CLIENT)",
                self.client,
                mine,
            )
            transport.abort()
            return
        if door.open >= door.max_connections:
            oldest = next(iter(door.strangers), None)
            if oldest is None:
                door.counts["refused"] += 1
                complain(
                    "refused",
                    "refused a web connection from %s: %d open already, all vouched for (ENCODERS_WEB_MAX_CONNECTIONS)",
                    self.client,
                    door.open,
                )
                transport.abort()
                return
            door.counts["evicted"] += 1
            complain(
                "evicted",
                "closed a web connection from %s that had shown no token, to make room (ENCODERS_WEB_MAX_CONNECTIONS)",
                oldest.client,
            )
            oldest.cut()
        self.admitted = self.seated = True
        door.open += 1
        door.per_client[self.client] = mine + 1
        door.strangers[self] = None
        door.guards[transport] = self
        door.counts["connections"] += 1
        self.token_timer = self.loop.call_later(door.token_timeout, self._no_token)
        self._wait_for_headers()
        self.inner.connection_made(transport)

    def vouch(self) -> None:
        """A request on this connection passed the token check."""
        if not self.vouched:
            self.vouched = True
            self.door.strangers.pop(self, None)
            if self.token_timer is not None:
                self.token_timer.cancel()
                self.token_timer = None

    def _no_token(self) -> None:
        self.token_timer = None
        self.door.counts["token_timeouts"] += 1
        complain(
            "token_timeouts",
            "closed a web connection from %s: no request with the token within %g s (ENCODERS_WEB_TOKEN_TIMEOUT)",
            self.client,
            self.door.token_timeout,
        )
        self.cut()

    def cut(self) -> None:
        """Close the connection now (its place at the door is free at once)."""
        self._leave()
        if self.transport is not None:
            self.transport.abort()

    def _leave(self) -> None:
        for timer in (self.header_timer, self.token_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.header_timer = self.token_timer = self.body_timer = None
        if not self.seated:
            return
        self.seated = False
        door = self.door
        door.open -= 1
        left = door.per_client.get(self.client, 1) - 1
        if left > 0:
            door.per_client[self.client] = left
        else:
            door.per_client.pop(self.client, None)
        door.strangers.pop(self, None)
        door.guards.pop(self.transport, None)

    # -- a request's headers -----------------------------------------------------------------------

    def _wait_for_headers(self) -> None:
        self.tail = b""
        self.next_early = False
        if self.header_timer is not None:
            self.header_timer.cancel()
        self.header_timer = self.loop.call_later(self.door.header_timeout, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        self.door.counts["header_timeouts"] += 1
        complain(
            "header_timeouts",
            "closed a web connection from %s: no complete request within %g s",
            self.client,
            self.door.header_timeout,
        )
        self.cut()

    def _headers_ended(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        self.tail = b""
        self.in_request = True
        self.body_at = self.loop.time()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.in_request:  # its body (or, pipelined, the next request, which aiohttp takes after it)
            request = self.request
            if request is not None and request.content.is_eof():
                self.next_early = True
            self.body_at = self.loop.time()
            self.inner.data_received(data)
            self._maybe_over()
            return
        if self.header_timer is None:  # the first byte of a new request (keep-alive): its headers are timed too
            self._wait_for_headers()
        seen = self.tail + data
        if seen.find(END_OF_HEADERS) >= 0:
            self._headers_ended()
        else:
            self.tail = seen[-3:]
        self.inner.data_received(data)

    # -- a request's body and answer (Door.watch) --------------------------------------------------

    def started(self, request: web.Request) -> None:
        """aiohttp runs the request's handler: its headers have ended (whatever the bytes looked like)."""
        if not self.in_request:
            self._headers_ended()
        self.request, self.handled = request, False
        if not request.content.is_eof() and self.body_timer is None:
            self.body_at = self.loop.time()
            self.body_timer = self.loop.call_later(self.door.body_timeout, self._body_check)

    def finished(self, request: web.Request) -> None:
        if request is self.request:
            self.handled = True
            self._maybe_over()

    def _maybe_over(self) -> None:
        """Once the handler has returned and the body has ended (aiohttp reads what the handler
        did not), the next byte is the next request's."""
        request = self.request
        if not self.handled or request is None or not request.content.is_eof():
            return
        self.in_request, self.request, self.handled = False, None, False
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if self.next_early:  # the next request began already: its headers are timed from now
            self._wait_for_headers()

    def _body_check(self) -> None:
        self.body_timer = None
        request = self.request
        if request is None or request.content.is_eof():
            return
        idle = self.loop.time() - self.body_at
        reading = getattr(self.transport, "is_reading", lambda: True)()
        if idle < self.door.body_timeout or not reading:  # still coming, or held back by the server itself
            wait = self.door.body_timeout - idle if reading else self.door.body_timeout
            self.body_timer = self.loop.call_later(max(wait, 0.01), self._body_check)
            return
        self.door.counts["body_timeouts"] += 1
        complain(
            "body_timeouts",
            "closed a web connection from %s: its request's body stopped coming for %g s (ENCODERS_WEB_BODY_TIMEOUT)",
            self.client,
            self.door.body_timeout,
        )
        self.cut()

    # -- the rest, as it is ----------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()
        if self.admitted:
            self.admitted = False
            self.request = None
            self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()


def guarded(factory: Callable[[], asyncio.Protocol], door: Door, loop: asyncio.AbstractEventLoop):
    """A protocol factory for ``loop.create_server``: each connection's handler behind a Guard."""
    return lambda: Guard(factory(), door, loop)


def client_of(transport: Any) -> str:
    """The remote address a connection comes from (its port left out): what the per-client cap counts."""
    name = transport.get_extra_info("peername") if transport is not None else None
    return str(name[0]) if isinstance(name, tuple | list) and name else "?"
