"""Who is connected to the web viewer, and what each client was sent and skipped.

Every video or event stream is a Client that follows one key of the board (latest.py) and
takes its newest value whenever it is ready for one: the versions it never saw are the ones
it skipped. Clients keeps the open ones and the totals of those that left, for /api/state,
the page's numbers and the viewer's final log line. It is used on the web server's loop only.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..latest import Latest

log = logging.getLogger("encoders.viewer.web")


@dataclass
class Client:
    id: int
    kind: str  # 'video' or 'events'
    what: str  # which video, or 'events'
    peer: str
    key: Any  # what it follows on the board
    transport: Any = None  # its connection, cut when the server stops
    started: float = field(default_factory=time.monotonic)
    version: int = 0  # of the last value it was sent
    sent: int = 0
    skipped: int = 0  # values replaced by a newer one before this client could take them

    @property
    def unit(self) -> str:
        """What its counts count: 'frames' or 'events'."""
        return "frames" if self.kind == "video" else "events"

    def take(self, version: int) -> None:
        if self.version:
            self.skipped += version - self.version - 1
        self.version = version
        self.sent += 1

    def skipped_now(self, board: Latest) -> int:
        """Skipped so far, counting those already replaced while it is still busy with an older one."""
        return self.skipped + (max(0, board.get(self.key)[0] - self.version - 1) if self.version else 0)

    def view(self, board: Latest) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "what": self.what,
            "peer": self.peer,
            "sent": self.sent,
            "skipped": self.skipped_now(board),
            "seconds": round(time.monotonic() - self.started, 1),
        }


class Clients:
    """The open clients, and the totals of every client so far."""

    def __init__(self, board: Latest, door: dict[str, int] | None = None) -> None:
        self.board = board
        self.door = door if door is not None else {}  # the connections' counts (guard.py): refused, timed out
        self._ids = itertools.count(1)
        self.open: dict[int, Client] = {}
        self.closed = {"served": 0, "frames_sent": 0, "frames_skipped": 0, "events_sent": 0, "events_skipped": 0}

    def add(self, kind: str, what: str, key: Any, peer: str, transport: Any = None) -> Client:
        client = Client(next(self._ids), kind, what, peer, key, transport)
        self.open[client.id] = client
        log.info("web client %d (%s) opened %s %s", client.id, client.peer, kind, what)
        return client

    def remove(self, client: Client) -> None:
        self.open.pop(client.id, None)
        skipped = client.skipped_now(self.board)
        self.closed["served"] += 1
        self.closed[f"{client.unit}_sent"] += client.sent
        self.closed[f"{client.unit}_skipped"] += skipped
        log.info(
            "web client %d (%s) left %s %s after %d %s sent, %d skipped",
            client.id,
            client.peer,
            client.kind,
            client.what,
            client.sent,
            client.unit,
            skipped,
        )

    def cut_off(self) -> None:
        """Drop every connection at once (the server is stopping): one stuck mid-write would
        otherwise hold the exit until the shutdown timeout."""
        for c in list(self.open.values()):
            if c.transport is not None:
                c.transport.abort()

    def counters(self) -> dict[str, Any]:
        """Clients open now, and what every client so far was sent and skipped."""
        out = {"clients_now": len(self.open), **self.closed, **self.door}
        for c in self.open.values():
            out[f"{c.unit}_sent"] += c.sent
            out[f"{c.unit}_skipped"] += c.skipped_now(self.board)
        return out

    def view(self) -> dict[str, Any]:
        """The counters with each open client's own (for /api/state)."""
        return {**self.counters(), "clients": [c.view(self.board) for c in self.open.values()]}
