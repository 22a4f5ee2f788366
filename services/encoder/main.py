"""encoder worker: take frames from every ingest, embed them in batches, push to metrics.

Decoding of the next batch (this thread) overlaps with the model running on the current
one (a second thread: torch releases the GIL while it computes).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import zmq
from zmq.utils.monitor import recv_monitor_message

from encoders.services.encoder.config import EncoderConfig
from encoders.shared import zmqio
from encoders.shared.messages import Credit, Embedding, Frame, Skipped
from encoders.shared.runtime import log_settings, setup_logging, stop_on_signals
from encoders.shared.settings import split_addrs

from .gpus import parse_gpus, run_per_gpu
from .intake import Held, Intake
from .model import ClipImageEncoder, ModelLoadError, load_encoder
from .preprocess import load_batch

# Frames already held when a stop is asked for are still encoded, for at most this long.
DRAIN_S = 30.0


class ModelThread:
    """Runs the model on one batch at a time; at most one more batch waits its turn."""

    def __init__(self, encoder: ClipImageEncoder):
        self.encoder = encoder
        self.todo: queue.Queue = queue.Queue(maxsize=1)
        self.done: queue.Queue = queue.Queue()
        self.busy = 0  # batches submitted and not yet collected
        self.thread = threading.Thread(target=self._loop, name="model", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.todo.get()
            if job is None:
                return
            items, arrays = job
            try:
                self.done.put((items, self.encoder.embed_arrays(arrays), None))
            except Exception as exc:  # a failed batch is reported, never silently lost
                self.done.put((items, None, exc))

    def has_room(self) -> bool:
        return self.busy < 2

    def submit(self, items: list[Held], arrays: list) -> None:
        self.busy += 1
        self.todo.put((items, arrays))

    def results(self, timeout: float = 0.0):
        try:
            while True:
                result = self.done.get(timeout=timeout)
                self.busy -= 1
                yield result
                timeout = 0.0
        except queue.Empty:
            return

    def close(self) -> None:
        self.todo.put(None)
        self.thread.join(timeout=5)


def run(cfg: EncoderConfig) -> int:
    log = setup_logging("encoder")
    log_settings(log, "encoder", cfg)
    stop = stop_on_signals()
    if cfg.gpus:
        try:
            ids = parse_gpus(cfg.gpus, torch.cuda.device_count())
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        return run_per_gpu(ids, cfg.worker_id, stop)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        encoder = load_encoder(cfg.model, cfg.pretrained, cfg.device, cfg.precision, cfg.fast_decode)
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 2
    cuda = encoder.device.type == "cuda"
    batch_size = cfg.batch_size or (64 if cuda else 8)
    decode_threads = cfg.decode_threads or (min(8, os.cpu_count() or 1) if cuda else 1)
    pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode") if decode_threads > 1 else None
    worker = cfg.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    addrs = split_addrs(cfg.work)
    ctx = zmq.Context()
    sources = [
        zmqio.open_socket(
            ctx, zmq.DEALER, addr, bind=False, linger=0, identity=f"{worker}/{i}/{uuid.uuid4().hex[:8]}".encode()
        )
        for i, addr in enumerate(addrs)
    ]
    monitors = [s.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED) for s in sources]
    push = zmqio.open_socket(ctx, zmq.PUSH, cfg.metrics_in, bind=False)
    intake = Intake(capacity=2 * batch_size, sources=len(sources))
    counters = {"received": 0, "embedded": 0, "skipped": 0, "batches": 0, "bad_messages": 0}
    model = ModelThread(encoder)
    poller = zmq.Poller()
    for sock in sources + monitors:
        poller.register(sock, zmq.POLLIN)
    for sock in sources:
        zmqio.send(sock, Credit(worker=worker, n=intake.capacity))
    lost_connection = [False] * len(sources)
    if cfg.ready_file:
        Path(cfg.ready_file).touch()
    log.info("worker %s taking frames from %s, batches of up to %d", worker, ", ".join(addrs), batch_size)

    draining = False  # once stopping: no new credit, so what ingest already sent is all that comes

    def give_credit(credit: dict[int, int]) -> None:
        if draining:
            return
        for src, n in credit.items():
            zmqio.send(sources[src], Credit(worker=worker, n=n), flags=zmq.NOBLOCK)

    def receive(timeout_ms: float) -> None:
        for sock, _ in poller.poll(timeout_ms):
            if sock in monitors:
                src = monitors.index(sock)
                event = recv_monitor_message(sock)["event"]
                if event == zmq.EVENT_DISCONNECTED:
                    lost_connection[src] = True
                elif event == zmq.EVENT_CONNECTED and lost_connection[src]:
                    # A restarted ingest knows nothing of our earlier credit.
                    lost_connection[src] = False
                    log.info("reconnected to %s: granting %d credits", addrs[src], intake.free(src))
                    give_credit({src: intake.free(src)})
                continue
            src = sources.index(sock)
            while sock.poll(0):  # drain: take every frame already waiting
                msg, _ = zmqio.receive(sock, counters=counters)
                if isinstance(msg, Frame):
                    intake.add(src, msg)
                    counters["received"] += 1

    def send_results(block_s: float) -> None:
        for items, vectors, error in model.results(timeout=block_s):
            if error is not None:
                log.error("batch of %d failed in the model: %s", len(items), error)
                for h in items:
                    zmqio.send(push, Skipped(h.frame.stream, h.frame.seq, worker, f"model error: {error}"))
                counters["skipped"] += len(items)
            else:
                now = time.time()
                for h, vec in zip(items, vectors, strict=False):
                    f = h.frame
                    zmqio.send(push, Embedding(f.stream, f.seq, f.t_capture, worker, encoder.name, now, vec))
                counters["embedded"] += len(items)
            give_credit(intake.finish(items))

    def encode_next() -> None:
        limit = min(batch_size, encoder.max_batch)
        if len(intake) < limit and cfg.batch_wait_ms > 0:
            deadline = time.monotonic() + cfg.batch_wait_ms / 1000
            while len(intake) < limit and (left := deadline - time.monotonic()) > 0:
                receive(left * 1000)
        items = intake.take(limit)
        arrays, ok, bad = load_batch(encoder.pre, [h.frame.jpeg for h in items], pool)
        for pos, reason in bad:
            f = items[pos].frame
            log.warning("%s #%d skipped: %s", f.stream, f.seq, reason)
            zmqio.send(push, Skipped(f.stream, f.seq, worker, reason))
        counters["skipped"] += len(bad)
        if bad:
            give_credit(intake.finish([items[pos] for pos, _ in bad]))
        if arrays:
            model.submit([items[i] for i in ok], arrays)
            counters["batches"] += 1

    last_log = time.monotonic()
    try:
        while not stop.is_set():
            receive(0 if len(intake) else 100)
            if len(intake) and model.has_room():
                encode_next()
            send_results(block_s=0.0 if model.has_room() or not model.busy else 0.05)
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log.info(
                    "received %(received)d, embedded %(embedded)d, skipped %(skipped)d in %(batches)d batches", counters
                )
        # Finish what we hold, and what is already on its way to us: those frames were given
        # to us and to nobody else.
        draining = True
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            receive(0 if len(intake) or model.busy else 200)
            if not (len(intake) or model.busy):
                break
            if len(intake) and model.has_room():
                encode_next()
            send_results(block_s=0.05)
        if len(intake) or model.busy:
            log.warning("stopped with %d frames not encoded", len(intake) + model.busy)
    finally:
        model.close()
        if pool is not None:
            pool.shutdown()
        log.info("worker %s done: embedded %d, skipped %d", worker, counters["embedded"], counters["skipped"])
        for sock in sources:
            sock.disable_monitor()
        for sock in monitors + sources:
            sock.close(0)
        push.close()  # lingers so the last embeddings reach metrics
        ctx.term()
    return 0
