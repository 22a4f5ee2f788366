"""The web viewer's door: how many connections it keeps, and how long a request's headers may take.

aiohttp bounds the size of a request's headers but not the time they take, nor the number of
connections: a client that opens hundreds of connections and sends each request a byte at a
time ("slowloris") holds them all. aiohttp has no setting for either, so each connection's
protocol (aiohttp's own RequestHandler) is wrapped in a Guard that

- closes the connection when the server already holds ``max_connections`` (counted
  ``refused``): a browser or a video player gets the next free one when it retries;
- closes it when a request's headers have not ended within ``header_timeout`` seconds of the
  connection, or of the request's first byte (counted ``header_timeouts``). A long answer (a
  video, an event stream) is not a request in progress: it is never cut.

Everything else is passed through untouched, so the Guard works over TLS too (it sees what
the TLS layer has decrypted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from encoders.shared.complaints import Complaints

log = logging.getLogger("encoders.viewer.web")
complain = Complaints(log, "the web viewer's counters (/api/state)")

END_OF_HEADERS = b"\r\n\r\n"


@dataclass
class Door:
    """What the guards share: the limits, the open connections, the counts."""

    max_connections: int
    header_timeout: float
    open: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"connections": 0, "refused": 0, "header_timeouts": 0})


class Guard(asyncio.Protocol):
    """One connection: the limits of its Door, then everything to ``inner`` (aiohttp's handler)."""

    def __init__(self, inner: asyncio.Protocol, door: Door, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.door = door
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""  # the last bytes of the headers so far: END_OF_HEADERS may be split across reads

    # -- the limits ----------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        door = self.door
        if door.open >= door.max_connections:
            door.counts["refused"] += 1
            complain(
                "refused",
                "refused a web connection from %s: %d open already (ENCODERS_WEB_MAX_CONNECTIONS)",
                peer(transport),
                door.open,
            )
            transport.abort()
            return
        self.admitted = True
        door.open += 1
        door.counts["connections"] += 1
        self._wait_for_headers()
        self.inner.connection_made(transport)

    def _wait_for_headers(self) -> None:
        self.tail = b""
        self.timer = self.loop.call_later(self.door.header_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self.timer = None
        self.door.counts["header_timeouts"] += 1
        complain(
            "header_timeouts",
            "closed a web connection from %s: no complete request within %g s",
            peer(self.transport),
            self.door.header_timeout,
        )
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.timer is None:  # the first byte of a new request (keep-alive): its headers are timed too
            self._wait_for_headers()
        seen = self.tail + data
        end = seen.find(END_OF_HEADERS)
        if end >= 0 and self.timer is not None:
            self.timer.cancel()
            self.timer = None
            if seen[end + len(END_OF_HEADERS) :]:  # the next request started already (pipelined)
                self._wait_for_headers()
                self.tail = seen[end + len(END_OF_HEADERS) :][-3:]
        else:
            self.tail = seen[-3:]
        self.inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.admitted:
            self.admitted = False
            self.door.open -= 1
            self.inner.connection_lost(exc)

    # -- the rest, as it is ----------------------------------------------------------------------

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


def peer(transport: Any) -> str:
    name = transport.get_extra_info("peername") if transport is not None else None
    return f"{name[0]}:{name[1]}" if name else "?"
