"""The ingest's data links: one DEALER per worker the core names in ``Workers`` (docs/PROTOCOL.md,
"Protocol 3"), each a CurveZMQ client of that worker's public key when keys are on.

``update(workers)`` opens a link to each worker new in the map and closes the link to each
worker gone from it; closing drops what was queued for that worker at once (linger 0): the
core has given those frames up already. ``send(worker, pictures)`` sends one ``Pictures``
without waiting; False if the worker is unknown or its queue is full (the core then counts the
frames lost, by link_lost or its hold timeout).
"""

from __future__ import annotations

import logging

import zmq

from encoders.shared import messages, zmqio
from encoders.shared.complaints import Complaints
from encoders.shared.keys import CurveKeys
from encoders.shared.messages import Pictures, Workers

log = logging.getLogger("encoders.ingest")
complain = Complaints(log, "the stream's Stats")

SNDHWM = 16  # Pictures queued for one worker (each up to 64 JPEGs): past it, a worker that is gone


class Links:
    def __init__(self, ctx: zmq.Context, keys: CurveKeys | None, counters: dict[str, int]) -> None:
        self.ctx, self.keys = ctx, keys
        self.links: dict[int, tuple[str, str, zmq.Socket]] = {}  # worker -> (address, key, its DEALER)
        self.counters = counters
        for name in ("links_opened", "links_closed", "pictures_sent", "pictures_unsent"):
            self.counters.setdefault(name, 0)

    def update(self, msg: Workers) -> None:
        wanted = {int(n): (link["address"], link["key"]) for n, link in msg.links.items()}
        for worker in [w for w, (a, k, _) in self.links.items() if wanted.get(w) != (a, k)]:
            self._close(worker, "the core says it is gone")
        for worker, (address, key) in wanted.items():
            if worker not in self.links:
                self._open(worker, address, key)

    def _open(self, worker: int, address: str, key: str) -> None:
        curve = None
        if self.keys is not None:
            if not key:
                complain("links_without_key", "worker %d at %s has no key, and this ingest has keys: no link", worker,
                         address)  # fmt: skip
                return
            curve = CurveKeys(self.keys.public, self.keys.secret, key.encode("ascii"))
        try:
            sock = zmqio.open_socket(
                self.ctx,
                zmq.DEALER,
                address,
                bind=False,
                sndhwm=SNDHWM,
                linger=zmqio.LINGER_MS,
                max_message_bytes=messages.HEADER_MAX_BYTES,  # a worker sends nothing here
                curve=curve,
            )
        except Exception as exc:  # an address that does not parse: nothing reaches that worker
            complain("links_failed", "cannot connect to worker %d at %s: %s", worker, address, exc)
            return
        self.links[worker] = (address, key, sock)
        self.counters["links_opened"] += 1
        log.info("data link to worker %d at %s", worker, address)

    def _close(self, worker: int, why: str) -> None:
        address, _, sock = self.links.pop(worker)
        sock.close(0)  # what was queued for it is dropped: the core gave those frames up
        self.counters["links_closed"] += 1
        log.info("data link to worker %d at %s closed: %s", worker, address, why)

    def send(self, worker: int, pictures: Pictures) -> bool:
        link = self.links.get(worker)
        if link is None:
            self.counters["pictures_unsent"] += pictures.n
            complain("pictures_unsent", "pictures assigned to worker %d, which this ingest has no link to", worker)
            return False
        try:
            zmqio.send(link[2], pictures, flags=zmqio.NOBLOCK)
        except zmq.Again:
            self.counters["pictures_unsent"] += pictures.n
            complain("pictures_unsent", "worker %d at %s takes no more pictures now", worker, link[0])
            return False
        self.counters["pictures_sent"] += pictures.n
        return True

    def close(self) -> None:
        for worker in list(self.links):
            sock = self.links.pop(worker)[2]
            sock.close()  # lingers: the last pictures still go
