"""An encoder worker's loop: pictures from the ingests, batches through the model, results back to the core.

``Worker`` opens its one session with the core (shared/session.py) on the context it is
given, and its data socket (datalink.py): its Hello offers a capacity (two batches: one
encoding, one gathering), names the model and the data socket. The core assigns it frames
while it holds fewer than that, and their ingests send the JPEGs straight to the data socket
(``Pictures``, docs/PROTOCOL.md "Protocol 3"); the worker
gathers them into batches, decodes a batch while the model thread encodes the one before,
makes each frame's thumbnail from the same decode (thumbnails.py), and answers every frame on the same session:
an embedding (and its thumbnail) or a skip (a JPEG that does not decode, a batch the model
failed), as rows of one ``Results`` message per step (protocol 3: the results due in a step,
those of finished batches and the skips found meanwhile, travel together). Sending a result is
what makes room: no credit is sent.

A lost session (the core silent for the timeout, or no longer knowing us) gives up what the
worker holds: the core counts those frames lost, so their results are never sent, even for
batches the model is still running (intake.py tags frames with the session's life). The
session says Hello again by itself, with the full capacity.

Stopping (SIGTERM, or a ``Stop`` from the core): the frames held are finished and their
results sent (``drain``), then Bye. Frames the core hands meanwhile (it does not know of a
SIGTERM) are not taken: the Bye gives them back to the core, which counts them lost.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from threading import Event

import zmq

from encoders.shared import messages, zmqio
from encoders.shared.complaints import Complaints
from encoders.shared.keys import client as client_keys
from encoders.shared.messages import (
    PROTOCOL,
    TEXT_MAX,
    Admits,
    Embedding,
    Frame,
    Hello,
    Message,
    Results,
    Skipped,
    Stop,
    Welcome,
    Workers,
)
from encoders.shared.session import CoreSession
from encoders.shared.settings import CoreConnection

from .datalink import DataLink
from .embedder import Embedder
from .intake import Intake
from .model_thread import ModelThread
from .preprocess import load_batch, picture_levels
from .thumbnails import Thumbnails

log = logging.getLogger("encoders.encoder")
complain = Complaints(log, "the worker's counters")  # bad input: logged once, then counted

# Frames already held when a stop is asked for are still encoded, for at most this long.
DRAIN_S = 30.0
LOG_EVERY = 10.0  # seconds between summary log lines
MAX_CAPACITY = 4096  # the most a Hello may offer (messages.Hello.capacity)
COUNTERS = (
    "received",  # frames the core handed
    "embedded",
    "skipped",
    "batches",
    "given_up",  # held when the session was lost: the core counted them lost
    "discarded",  # results of a life that had ended, not sent
    "over_capacity",  # frames handed beyond the capacity offered (a core's mistake): skipped
    "not_taken",  # frames handed while stopping: given back by the Bye
    "unsent",  # results the session's socket would not take (the connection was down)
    "unexpected_messages",
    "bad_messages",
)


class Worker:
    """Takes frames from the core, embeds them in batches, sends the results back on the session."""

    def __init__(
        self,
        name: str,
        encoder: Embedder,
        ctx: zmq.Context,
        core: CoreConnection,
        *,
        batch_size: int,
        batch_wait_ms: float,
        decode_threads: int,
        thumbnail_size: int = 0,
        thumbnail_quality: int = 70,
        observe_batch: Callable[[int, float], None] | None = None,
        data_bind: str = "",
        data_advertise: str = "",
    ):
        self.name = name
        self.encoder = encoder
        self.batch_size = batch_size
        self.batch_wait_ms = batch_wait_ms
        # Seconds before the last picture since the one before it or since room was last freed (0 for
        # pictures of one message): a batch waits to fill only while that is under batch_wait_ms
        # (encode_next). Freed room counts: the core answers it at once, with pictures from as many
        # ingests as it assigns, each a message of its own; the first of them is not alone.
        self.picture_gap = math.inf
        self._stirred_at = -math.inf  # when a picture last came, or room was last freed
        self.intake = Intake(capacity=min(2 * batch_size, MAX_CAPACITY))
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.session = CoreSession.from_settings(  # first: an address that does not parse is StartupError
            ctx,
            core,
            "worker",
            self.hello,
            on_join=self._joined,
            on_lost=self._lost,
            counters=self.counters,
            sndhwm=max(1000, 4 * self.intake.capacity),  # results in flight never exceed the capacity
            largest_part=messages.largest_part(),  # no JPEG on the session: they come on the data socket
        )
        # The data socket (datalink.py): the pictures the core assigned this worker, from the ingests.
        self.data = DataLink(
            ctx,
            data_bind,  # "": the default (datalink.default_bind), the next port if another worker has it
            data_advertise,
            core.max_frame_bytes,
            client_keys(core.keys, "worker"),
            self.counters,
        )
        self.poller = zmq.Poller()
        self.poller.register(self.session.sock, zmq.POLLIN)
        self.poller.register(self.data.sock, zmq.POLLIN)
        if self.data.monitor is not None:  # handshakes refused before ZAP: counted as they come
            self.poller.register(self.data.monitor, zmq.POLLIN)
        self.model = ModelThread(encoder, observe_batch)
        self.poller.register(self.model.wakeup, zmq.POLLIN)  # a batch finished (model_thread.py)
        self.pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode") if decode_threads > 1 else None
        self.thumbnails = Thumbnails(thumbnail_size, thumbnail_quality)
        self.due: list[Embedding | Skipped] = []  # results not sent yet: they go out as one Results (flush)
        self.stop_asked = ""  # the core's Stop, with its reason
        self.draining = False  # stopping: frames handed now are not taken
        self.on_turn: Callable[[], None] = lambda: None  # each turn of the loop (the exporter's beat)

    # -- the session ------------------------------------------------------------------------------

    def hello(self) -> Hello:
        encoder = self.encoder
        return Hello(
            "worker",
            self.name,
            PROTOCOL,
            capacity=self.intake.capacity,
            model=encoder.name[:1024],
            dim=encoder.dim,
            data=self.data.address,
            advertised=self.data.advertised,
        )

    def _joined(self, welcome: Welcome) -> None:
        self.intake.begin(self.session.lives)
        log.info("worker %s: the core hands up to %d frames at once", self.name, self.intake.capacity)

    def _lost(self) -> None:
        n = self.intake.give_up()
        self.counters["given_up"] += n
        self.counters["discarded"] += len(self.due)  # results of the life that ended: the core counted them lost
        self.due.clear()
        if n or self.model.busy:
            log.warning("gave up %d frames held and the results of %d batches running", n, self.model.busy)

    def receive(self, timeout_ms: int) -> None:
        """Take what the core sent and the pictures the ingests sent (waiting up to ``timeout_ms`` for
        something); heartbeat when due."""
        ready = dict(self.poller.poll(timeout_ms))
        if self.model.wakeup in ready:
            self.model.woken()  # the results go out in this step's send_results
        if self.session.sock in ready:
            for msg in self.session.take(time.monotonic()):
                self._from_core(msg)
        if self.data.sock in ready:
            now = time.monotonic()
            for frame in self.data.receive():
                self.picture_gap, self._stirred_at = now - self._stirred_at, now
                self._picture(frame)
        elif self.data.monitor is not None and self.data.monitor in ready:
            self.data.watch()
        self.session.tick(time.monotonic())

    def _picture(self, frame: Frame) -> None:
        """A picture the core assigned this worker, from its ingest (the data socket)."""
        self.counters["received"] += 1
        if self.draining:
            self.counters["not_taken"] += 1
        elif not self.intake.add(frame):
            self.counters["over_capacity"] += 1
            complain(
                "over_capacity",
                "%s #%d: handed beyond the capacity of %d: skipped",
                frame.stream,
                frame.seq,
                self.intake.capacity,
            )
            reason = f"over capacity ({self.intake.capacity} held)"
            self.due.append(Skipped(frame.stream, frame.seq, self.name, reason))

    def _from_core(self, msg: Message) -> None:
        if isinstance(msg, Workers):
            self.data.admit(msg.admit)
            # Said once its data socket admits them: only then does the core send the ingests here.
            try:
                self.session.send(Admits(msg.generation), time.monotonic(), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # no connection to the core: a new session is told the keys again, and answers then
        elif isinstance(msg, Stop):
            self.stop_asked = msg.reason or "no reason given"
            self.draining = True  # frames after the Stop are not taken
            log.info("the core asks this worker to stop (%s)", self.stop_asked)
        else:
            self.counters["unexpected_messages"] += 1
            complain(
                "unexpected_messages", "ignored a %s message from the core (a worker expects workers or stop)", msg.KIND
            )

    def flush(self) -> None:
        """Send the results due, as one Results (more only past a batch's bounds: messages.Results.many)."""
        if not self.due:
            return
        due, self.due = self.due, []
        for msg in Results.many(due):
            self._send(msg, msg.n)

    def _send(self, msg: Message, results: int) -> None:
        try:
            self.session.send(msg, time.monotonic(), flags=zmq.NOBLOCK)
        except zmq.Again:  # no live connection: the core counts the frames lost, or the session is lost
            before = self.counters["unsent"]
            self.counters["unsent"] += results
            if before == 0 or before // 1000 != self.counters["unsent"] // 1000:
                log.warning("the connection to the core is down: %d results not sent so far", self.counters["unsent"])

    # -- batches ----------------------------------------------------------------------------------

    def encode_next(self) -> None:
        """Gather a batch (waiting up to batch_wait_ms for it to fill, while pictures come closer together
        than that), decode it, hand it to the model.

        A picture that came alone (batch_wait_ms or more after the one before and after the last
        batch finished: a camera's frames at its rate, on a worker with room) goes at once: waiting
        would only delay it (5 ms a frame at 30 frames/s, issue #21). Frames that come close together
        still wait for the rest of a batch, as do those the core sends for room a batch just freed (a
        saturated worker's batches stay full), and a worker that is busy gathers its next batch while
        the model runs anyway."""
        limit = min(self.batch_size, self.encoder.max_batch)
        if len(self.intake) < limit and self.batch_wait_ms > 0 and self.picture_gap < self.batch_wait_ms / 1000:
            deadline = time.monotonic() + self.batch_wait_ms / 1000
            while len(self.intake) < limit and (left := deadline - time.monotonic()) > 0:
                self.receive(zmqio.poll_ms(left))
        items = self.intake.take(limit)
        if not items:
            return  # the session was lost while gathering
        # Each frame decoded once, for the model and its thumbnail, on the decode threads.
        jpegs = [h.frame.jpeg for h in items]
        arrays, ok, bad, thumbnails = load_batch(self.encoder.pre, jpegs, self.pool, self.thumbnails.of)
        for pos, reason in bad:
            f = items[pos].frame
            complain("skipped", "%s #%d skipped: %s", f.stream, f.seq, reason)
            self.due.append(Skipped(f.stream, f.seq, self.name, reason[:TEXT_MAX]))
        self.counters["skipped"] += len(bad)
        self.intake.finish([items[pos] for pos, _ in bad])
        if arrays:
            batch = [items[i] for i in ok]
            for h, array, made in zip(batch, arrays, thumbnails, strict=True):
                h.levels = picture_levels(array) if array.size else None  # for the core's blackout alert
                h.thumbnail = made
            self.model.submit(batch, arrays)
            self.counters["batches"] += 1

    def send_results(self, block_s: float) -> None:
        """Send the results of every batch the model finished (waiting up to ``block_s`` for one).

        Only for frames of this life: the core gave up the others when the session was lost.
        """
        finished = False
        for items, vectors, error in self.model.results(timeout=block_s):
            finished = True
            self._stirred_at = time.monotonic()  # room freed: the pictures the core sends for it come together
            mine = self.intake.finish(items)
            self.counters["discarded"] += len(items) - len(mine)
            if vectors is None:
                log.error("batch of %d failed in the model: %s", len(items), error)
                for h in mine:
                    f = h.frame
                    self.due.append(Skipped(f.stream, f.seq, self.name, f"model error: {error}"[:TEXT_MAX]))
                self.counters["skipped"] += len(mine)
                continue
            now = time.time()
            for h, vec in zip(items, vectors, strict=False):
                if not self.intake.current(h):
                    continue
                f = h.frame
                thumbnail = self.thumbnails.result(h.thumbnail, f"{f.stream} #{f.seq}")
                brightness, contrast = h.levels or (None, None)
                self.due.append(
                    Embedding(
                        f.stream, f.seq, f.t_capture, self.name, self.encoder.name, now, vec, thumbnail, brightness,
                        contrast,
                    )
                )  # fmt: skip
            self.counters["embedded"] += len(mine)
        # Skips found meanwhile (a corrupt JPEG, over capacity) go with the next batch the model
        # finishes, in its one Results, or at once when the model runs none.
        if finished or not self.model.busy:
            self.flush()

    # -- running, stopping ------------------------------------------------------------------------

    def start(self) -> None:
        """Say Hello: frames come once the core welcomes the session."""
        self.session.start(time.monotonic())

    def run(self, stop: Event) -> None:
        """Steps until ``stop`` is set or the core says Stop, with a summary log line now and then.

        SessionRefused (from the session) when the core refuses this worker for good.
        """
        last_log = time.monotonic()
        while not stop.is_set() and not self.stop_asked:
            self.on_turn()
            self.step()
            if time.monotonic() - last_log > LOG_EVERY:
                last_log = time.monotonic()
                log.info("%s", self.summary())

    def step(self) -> None:
        """Receive, start a batch when the model has room, send what it finished."""
        # A batch that finishes wakes the poll (model_thread.py): its results go out at once.
        self.receive(0 if len(self.intake) else 100)
        if len(self.intake) and self.model.has_room():
            self.encode_next()
        self.send_results(block_s=0.0 if self.model.has_room() or not self.model.busy else 0.05)

    def drain(self, limit_s: float = DRAIN_S) -> None:
        """Finish the frames held and send their results; frames handed meanwhile are not taken."""
        self.draining = True
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            self.on_turn()
            self.receive(0 if len(self.intake) or self.model.busy else 200)
            if not (len(self.intake) or self.model.busy):
                break
            if len(self.intake) and self.model.has_room():
                self.encode_next()
            self.send_results(block_s=0.05)
        if self.intake.held or self.model.busy:
            log.warning("stopped with %d frames not encoded", self.intake.held)

    def close(self) -> None:
        """Stop the model and decode threads, say Bye, log the totals, close the session's socket."""
        self.flush()
        self.model.close()
        if self.pool is not None:
            self.pool.shutdown()
        self.session.close(time.monotonic(), self.stop_asked or "stopping")
        self.data.close()
        log.info("worker %s done: %s", self.name, self.summary())

    def summary(self) -> str:
        c = self.counters
        text = f"received {c['received']}, embedded {c['embedded']}, skipped {c['skipped']} in {c['batches']} batches"
        bad = ("bad_messages", "unexpected_messages")
        extra = {k: c[k] for k in ("given_up", "discarded", "over_capacity", "not_taken", "unsent", *bad) if c[k]}
        if self.thumbnails.failed:
            extra["without_thumbnail"] = self.thumbnails.failed
        return text + "".join(f", {k.replace('_', ' ')} {v}" for k, v in extra.items())
