"""An encoder worker's loop: frames in by credit, batches through the model, outcomes out.

``WorkerSockets`` are the worker's links: a DEALER to each ingest (with a monitor that
reports its connects and disconnects) and a PUSH to metrics. ``Worker`` is given them and
does the rest: it grants each ingest credit, gathers frames into batches, decodes a batch
while the model thread encodes the one before, pushes every outcome (an embedding, or a
frame skipped and why) to metrics, and gives each finished frame's credit back to the
ingest it came from.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from threading import Event

import zmq
from zmq.utils.monitor import recv_monitor_message

from encoders.shared import zmqio
from encoders.shared.messages import TEXT_MAX, Credit, Embedding, Frame, Skipped

from .intake import Intake
from .model import ClipImageEncoder
from .model_thread import ModelThread
from .preprocess import load_batch

log = logging.getLogger("encoders.encoder")

# Frames already held when a stop is asked for are still encoded, for at most this long.
DRAIN_S = 30.0
LOG_EVERY = 10.0  # seconds between summary log lines


@dataclass
class WorkerSockets:
    """What a worker is connected to; opened by ``open``, closed by ``close``."""

    addrs: list[str]  # each ingest's work endpoint, in the order of ``sources``
    sources: list[zmq.Socket]  # a DEALER to each ingest
    monitors: list[zmq.Socket]  # each source's connects and disconnects
    push: zmq.Socket  # to metrics

    @classmethod
    def open(cls, ctx: zmq.Context, addrs: list[str], metrics_in: str, worker: str) -> WorkerSockets:
        """Connect to every ingest and to metrics; StartupError names an endpoint that does not parse."""
        sources = [
            # Unique per run: ingest's ROUTER turns away a peer whose identity it still holds,
            # as it would a worker restarted with the same --worker-id.
            zmqio.open_socket(
                ctx, zmq.DEALER, addr, bind=False, linger=0, identity=f"{worker}/{i}/{uuid.uuid4().hex[:8]}".encode()
            )
            for i, addr in enumerate(addrs)
        ]
        monitors = [s.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED) for s in sources]
        push = zmqio.open_socket(ctx, zmq.PUSH, metrics_in, bind=False)
        return cls(addrs, sources, monitors, push)

    def close(self) -> None:
        for sock in self.sources:
            sock.disable_monitor()
        for sock in self.monitors + self.sources:
            sock.close(0)
        self.push.close()  # lingers so the last embeddings reach metrics


class Worker:
    """Takes frames from every ingest by credit, embeds them in batches, pushes the outcomes."""

    def __init__(
        self,
        name: str,
        encoder: ClipImageEncoder,
        sockets: WorkerSockets,
        *,
        batch_size: int,
        batch_wait_ms: float,
        decode_threads: int,
    ):
        self.name = name
        self.encoder = encoder
        self.sockets = sockets
        self.batch_size = batch_size
        self.batch_wait_ms = batch_wait_ms
        self.intake = Intake(capacity=2 * batch_size, sources=len(sockets.sources))
        self.model = ModelThread(encoder)
        self.pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode") if decode_threads > 1 else None
        self.counters = {"received": 0, "embedded": 0, "skipped": 0, "batches": 0, "bad_messages": 0}
        # Per source: set once its connection drops, so that the next connect re-grants credit.
        self.lost_connection = [False] * len(sockets.sources)
        # Once stopping: no new credit, so what ingest already sent is all that comes.
        self.draining = False
        self.poller = zmq.Poller()
        for sock in sockets.sources + sockets.monitors:
            self.poller.register(sock, zmq.POLLIN)

    def grant_full_credit(self) -> None:
        """Ask every ingest for as many frames as the intake holds: one batch encoding, one gathering."""
        for sock in self.sockets.sources:
            zmqio.send(sock, Credit(worker=self.name, n=self.intake.capacity))

    def give_credit(self, credit: dict[int, int]) -> None:
        """Credit back to each source (by index) for frames finished; none while draining."""
        if self.draining:
            return
        for src, n in credit.items():
            zmqio.send(self.sockets.sources[src], Credit(worker=self.name, n=n), flags=zmq.NOBLOCK)

    def receive(self, timeout_ms: int) -> None:
        """Take every frame waiting (waiting up to ``timeout_ms`` for one), and note reconnects."""
        for sock, _ in self.poller.poll(timeout_ms):
            if sock in self.sockets.monitors:
                self._connection_event(self.sockets.monitors.index(sock))
                continue
            src = self.sockets.sources.index(sock)
            while sock.poll(0):  # drain: take every frame already waiting
                msg, _ = zmqio.receive(sock, counters=self.counters)
                if isinstance(msg, Frame):
                    self.intake.add(src, msg)
                    self.counters["received"] += 1

    def _connection_event(self, src: int) -> None:
        event = recv_monitor_message(self.sockets.monitors[src])["event"]
        if event == zmq.EVENT_DISCONNECTED:
            self.lost_connection[src] = True
        elif event == zmq.EVENT_CONNECTED and self.lost_connection[src]:
            # A restarted ingest knows nothing of our earlier credit.
            self.lost_connection[src] = False
            free = self.intake.free(src)
            log.info("reconnected to %s: granting %d credits", self.sockets.addrs[src], free)
            self.give_credit({src: free})

    def encode_next(self) -> None:
        """Gather a batch (waiting up to batch_wait_ms for it to fill), decode it, hand it to the model."""
        limit = min(self.batch_size, self.encoder.max_batch)
        if len(self.intake) < limit and self.batch_wait_ms > 0:
            deadline = time.monotonic() + self.batch_wait_ms / 1000
            while len(self.intake) < limit and (left := deadline - time.monotonic()) > 0:
                self.receive(int(left * 1000))  # as pyzmq would round it
        items = self.intake.take(limit)
        arrays, ok, bad = load_batch(self.encoder.pre, [h.frame.jpeg for h in items], self.pool)
        for pos, reason in bad:
            f = items[pos].frame
            log.warning("%s #%d skipped: %s", f.stream, f.seq, reason)
            zmqio.send(self.sockets.push, Skipped(f.stream, f.seq, self.name, reason))
        self.counters["skipped"] += len(bad)
        if bad:
            self.give_credit(self.intake.finish([items[pos] for pos, _ in bad]))
        if arrays:
            self.model.submit([items[i] for i in ok], arrays)
            self.counters["batches"] += 1

    def send_results(self, block_s: float) -> None:
        """Push the outcome of every batch the model finished (waiting up to ``block_s`` for one)."""
        push = self.sockets.push
        for items, vectors, error in self.model.results(timeout=block_s):
            if vectors is None:
                log.error("batch of %d failed in the model: %s", len(items), error)
                for h in items:
                    zmqio.send(
                        push, Skipped(h.frame.stream, h.frame.seq, self.name, f"model error: {error}"[:TEXT_MAX])
                    )
                self.counters["skipped"] += len(items)
            else:
                now = time.time()
                for h, vec in zip(items, vectors, strict=False):
                    f = h.frame
                    zmqio.send(push, Embedding(f.stream, f.seq, f.t_capture, self.name, self.encoder.name, now, vec))
                self.counters["embedded"] += len(items)
            self.give_credit(self.intake.finish(items))

    def run(self, stop: Event) -> None:
        """Receive, encode and send until ``stop`` is set, with a summary log line now and then."""
        last_log = time.monotonic()
        while not stop.is_set():
            self.receive(0 if len(self.intake) else 100)
            if len(self.intake) and self.model.has_room():
                self.encode_next()
            self.send_results(block_s=0.0 if self.model.has_room() or not self.model.busy else 0.05)
            if time.monotonic() - last_log > LOG_EVERY:
                last_log = time.monotonic()
                log.info(
                    "received %(received)d, embedded %(embedded)d, skipped %(skipped)d in %(batches)d batches",
                    self.counters,
                )

    def drain(self, limit_s: float = DRAIN_S) -> None:
        """Finish what we hold, and what is already on its way to us: those frames were given
        to us and to nobody else. No new credit is given meanwhile."""
        self.draining = True
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            self.receive(0 if len(self.intake) or self.model.busy else 200)
            if not (len(self.intake) or self.model.busy):
                break
            if len(self.intake) and self.model.has_room():
                self.encode_next()
            self.send_results(block_s=0.05)
        if len(self.intake) or self.model.busy:
            log.warning("stopped with %d frames not encoded", len(self.intake) + self.model.busy)

    def close(self) -> None:
        """Stop the model and decode threads, log the totals, close the sockets."""
        self.model.close()
        if self.pool is not None:
            self.pool.shutdown()
        log.info(
            "worker %s done: embedded %d, skipped %d", self.name, self.counters["embedded"], self.counters["skipped"]
        )
        self.sockets.close()
