"""encoder worker: take frames from every ingest, embed them in batches, push to metrics.

Settings -> the model -> sockets -> the worker's loop (worker.py) -> drain and shut down.
With --gpus it starts one such worker process per GPU instead (gpus.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import torch
import zmq

from encoders.services.encoder.config import EncoderConfig
from encoders.shared.runtime import StartupError, service_main
from encoders.shared.settings import split_addrs

from .gpus import parse_gpus, run_per_gpu
from .model import ModelLoadError, load_encoder
from .worker import Worker, WorkerSockets

log = logging.getLogger("encoders.encoder")


def run(cfg: EncoderConfig) -> int:
    return service_main("encoder", cfg, lambda stop: serve(cfg, stop))


def serve(cfg: EncoderConfig, stop: threading.Event) -> int:
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
    # On the CPU the cores run the model; a GPU worker needs decoding in parallel to keep up.
    decode_threads = cfg.decode_threads or (min(8, os.cpu_count() or 1) if cuda else 1)
    name = cfg.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    addrs = split_addrs(cfg.work)

    ctx = zmq.Context()
    try:
        sockets = WorkerSockets.open(ctx, addrs, cfg.metrics_in, name)
    except StartupError:
        ctx.destroy(linger=0)
        raise

    worker = Worker(
        name, encoder, sockets, batch_size=batch_size, batch_wait_ms=cfg.batch_wait_ms, decode_threads=decode_threads
    )
    worker.grant_full_credit()
    if cfg.ready_file:
        Path(cfg.ready_file).touch()
    log.info("worker %s taking frames from %s, batches of up to %d", name, ", ".join(addrs), batch_size)
    try:
        worker.run(stop)
        worker.drain()
    finally:
        worker.close()
        ctx.term()
    return 0
