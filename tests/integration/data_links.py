"""An ingest's side of protocol 3's data links, for tests that drive the core with raw sockets.

``announce`` sends a capture as an ingest does (a ``Captured`` of one row, its JPEG kept here);
``pump`` reads what the core sent the ingest: its ``Workers`` (each worker named by its Hello's data
address, ``ipc://NAME``: what ``worker_hello`` gives) and its ``Assigned``, whose pictures wait here,
by worker name, as the Frames its data socket would take (``frames(name)``); anything else is kept in
``other``."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from typing import Any

import zmq

from encoders.shared import zmqio
from encoders.shared.messages import PROTOCOL, Assigned, Captured, CaptureNote, Frame, Hello, Message, Workers


def worker_hello(name: str, **fields: Any) -> Hello:
    """A worker's Hello whose data socket names it (``ipc://NAME``): the stand-in hands it its pictures."""
    return Hello("worker", name, PROTOCOL, data=f"ipc://{name}", **fields)


class IngestLinks:
    def __init__(self, ingest: zmq.Socket, stream: str) -> None:
        self.ingest, self.stream = ingest, stream
        self.ids = itertools.count(1)
        self.held: dict[int, tuple[float, bytes]] = {}
        self.numbers: dict[int, str] = {}
        self.waiting: dict[str, list[Frame]] = defaultdict(list)
        self.other: list[Message] = []

    def announce(self, jpeg: bytes, t: float | None = None) -> None:
        i = next(self.ids)
        t = time.time() if t is None else t
        self.held[i] = (t, jpeg)
        zmqio.send(self.ingest, Captured.of([CaptureNote(i, t, len(jpeg), 2, 2)]))

    def pump(self, timeout_ms: int = 0) -> None:
        while self.ingest.poll(timeout_ms):
            timeout_ms = 0
            msg, _ = zmqio.receive(self.ingest)
            if isinstance(msg, Workers):
                self.numbers = {int(n): link["address"].removeprefix("ipc://") for n, link in msg.links.items()}
            elif isinstance(msg, Assigned):
                for row in msg.rows():
                    t, jpeg = self.held.pop(row.id, (0.0, b""))
                    name = self.numbers.get(row.worker)
                    if row.worker and name is not None:
                        self.waiting[name].append(Frame(self.stream, row.seq, t, 2, 2, jpeg))
            elif msg is not None:
                self.other.append(msg)

    def frames(self, name: str) -> list[Frame]:
        out, self.waiting[name] = self.waiting[name], []
        return out
