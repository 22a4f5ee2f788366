"""metrics: collect every worker's embeddings, restore order, compute drift, publish records.

Settings -> sockets -> the service's loop (service.py) -> the final flush and shutdown.
"""

from __future__ import annotations

import logging
import threading

import zmq

from encoders.services.metrics.config import MetricsConfig
from encoders.shared import zmqio
from encoders.shared.runtime import StartupError, service_main

from .scenes import SceneRule
from .service import RECORDS_HWM, MetricsService
from .streams import Streams

log = logging.getLogger("encoders.metrics")


def run(cfg: MetricsConfig) -> int:
    return service_main("metrics", cfg, lambda stop: serve(cfg, stop))


def serve(cfg: MetricsConfig, stop: threading.Event) -> int:
    # 'none' rather than '': an empty environment variable reads as unset, i.e. the default.
    wants_recorder = cfg.records_bind.lower() not in ("", "none")

    ctx = zmq.Context()
    try:
        inbox = zmqio.open_socket(ctx, zmq.PULL, cfg.metrics_in_bind, bind=True)
        pub = zmqio.open_socket(ctx, zmq.PUB, cfg.metrics_bind, bind=True)
        records = (
            zmqio.open_socket(ctx, zmq.PUSH, cfg.records_bind, bind=True, sndhwm=RECORDS_HWM)
            if wants_recorder
            else None
        )
    except StartupError:
        ctx.destroy(linger=0)
        raise

    service = MetricsService(
        Streams(cfg.rolling_window, cfg.max_wait, SceneRule.from_config(cfg)),
        inbox,
        pub,
        records,
        exit_after_streams=cfg.exit_after_streams,
    )
    log.info(
        "metrics listening on %s; records on %s", cfg.metrics_in_bind, cfg.records_bind if wants_recorder else "(none)"
    )
    try:
        service.run(stop)
    finally:
        service.finish()
        service.close()
        ctx.term()
    return 0
