"""encoder worker: take frames from the core, embed them in batches, send the results back to it.

Settings -> the model -> the session with the core (ENCODERS_CORE) -> the worker's loop
(worker.py) -> drain, Bye and shut down. With --gpus it starts one such worker process per
GPU instead (gpus.py), each with its own session. With --runtime none there is no model
(embedder.NoModel): torch is never imported.

Exit codes: 0 stopped; 2 cannot start (a setting, the model, the core's address) or the
core refused this worker.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from encoders.services.encoder.config import EncoderConfig
from encoders.shared import keys
from encoders.shared.exporter import BATCH_BUCKETS, LATENCY_BUCKETS, Exporter, Families
from encoders.shared.runtime import StartupError, service_main
from encoders.shared.session import SessionRefused, process_name

from .datalink import default_bind
from .embedder import Embedder, NoModel
from .gpus import parse_gpus, run_per_gpu
from .worker import Worker

if TYPE_CHECKING:
    from .model import ClipImageEncoder

log = logging.getLogger("encoders.encoder")


def run(cfg: EncoderConfig) -> int:
    return service_main("encoder", cfg, lambda stop: serve(cfg, stop))


def serve(cfg: EncoderConfig, stop: threading.Event) -> int:
    keys.check_binds([cfg.data_bind or default_bind(cfg.keys)], cfg.keys, cfg.insecure)
    if cfg.runtime == "none":
        if cfg.gpus:
            log.error("--gpus starts a worker per GPU to run a model; ENCODERS_RUNTIME=none runs none")
            return 2
        encoder: Embedder = NoModel(cfg.none_dim, cfg.fast_decode, cfg.none_decode)
        cuda = False
    else:
        loaded = load_model(cfg, stop)
        if isinstance(loaded, int):
            return loaded
        encoder, cuda = loaded, loaded.device.type == "cuda"
    batch_size = cfg.batch_size or (64 if cuda else 8)
    # On the CPU the cores run the model; a GPU worker needs decoding in parallel to keep up.
    decode_threads = cfg.decode_threads or (min(8, os.cpu_count() or 1) if cuda else 1)
    name = cfg.worker_id or process_name()

    exporter = Exporter("encoder")
    batch_sizes = exporter.histogram("encoders_batch_size", "Frames per batch the model encoded", buckets=BATCH_BUCKETS)
    encode_s = exporter.histogram("encoders_encode_seconds", "Time the model took per batch", buckets=LATENCY_BUCKETS)

    def observe_batch(n: int, seconds: float) -> None:
        batch_sizes.observe(n)
        encode_s.observe(seconds)

    ctx = zmq.Context()
    try:
        worker = Worker(
            name,
            encoder,
            ctx,
            cfg,
            batch_size=batch_size,
            batch_wait_ms=cfg.batch_wait_ms,
            decode_threads=decode_threads,
            # Without decoding (ENCODERS_NONE_DECODE=0) no picture work at all: a thumbnail decodes its frame.
            thumbnail_size=cfg.thumbnail_size if cfg.runtime != "none" or cfg.none_decode else 0,
            thumbnail_quality=cfg.thumbnail_quality,
            observe_batch=observe_batch,
            data_bind=cfg.data_bind,
            data_advertise=cfg.data_advertise,
        )
    except StartupError:  # the core's address does not parse
        ctx.destroy(linger=0)
        raise
    exporter.collect(functools.partial(worker_families, worker))
    worker.on_turn = exporter.beat  # /healthz tells a wedged loop (shared/exporter.py)
    exporter.start(cfg)
    if cfg.ready_file:
        Path(cfg.ready_file).touch()
    log.info(
        "worker %s: assignments from the core at %s, pictures on %s, batches of up to %d",
        name,
        cfg.core,
        worker.data.address,
        batch_size,
    )
    code = 0
    try:
        worker.start()
        worker.run(stop)
        worker.drain()
    except SessionRefused as exc:
        log.error("%s", exc)
        code = 2
    finally:
        worker.close()
        exporter.stop()
        ctx.term()
    return code


def load_model(cfg: EncoderConfig, stop: threading.Event) -> ClipImageEncoder | int:
    """The model (model.py, torch imported only now), or the exit code: --gpus started a worker
    per GPU and they have ended, or the model could not be loaded (2)."""
    import torch

    from .model import ModelLoadError, load_encoder

    if cfg.gpus:
        try:
            ids = parse_gpus(cfg.gpus, torch.cuda.device_count())
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        return run_per_gpu(ids, cfg.worker_id, stop, cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return load_encoder(
            cfg.model,
            cfg.pretrained,
            cfg.device,
            cfg.precision,
            cfg.fast_decode,
            runtime=cfg.runtime,
            cache_dir=cfg.model_cache,
            threads=cfg.threads,
        )
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 2


def worker_families(worker: Worker, f: Families) -> None:
    """The worker's counts at a scrape (shared/exporter.py)."""
    c, labels = worker.counters, {"worker": worker.name}
    f.counter("encoders_worker_frames_received", "Frames the core handed this worker", c["received"], **labels)
    f.counter("encoders_worker_frames_embedded", "Frames this worker embedded", c["embedded"], **labels)
    f.counter("encoders_worker_frames_skipped", "Frames this worker could not embed", c["skipped"], **labels)
    f.counter("encoders_worker_batches", "Batches this worker ran", c["batches"], **labels)
    f.counter("encoders_decode_errors", "Messages that did not decode", c["bad_messages"], service="encoder")
    f.gauge("encoders_worker_frames_held", "Frames this worker holds now", worker.intake.held, **labels)
    f.gauge("encoders_worker_capacity", "Frames this worker can hold", worker.intake.capacity, **labels)
