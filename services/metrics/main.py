"""metrics, the core: every service's session, frames numbered and dispatched, drift, records delivered.

Settings -> the state folder -> sockets -> the core's loop (service.py) -> its drain and shutdown.
"""

from __future__ import annotations

import logging
import threading

import zmq

from encoders.services.metrics.config import MetricsConfig
from encoders.shared import keys, zmqio
from encoders.shared.runtime import StartupError, service_main
from encoders.shared.settings import split_addrs
from encoders.shared.spool import SpoolLocked

from .delivery import Delivery
from .exported import core_exporter
from .numbering import Numbering, StateDir
from .service import MAX_MESSAGE_BYTES, Core

log = logging.getLogger("encoders.metrics")


def run(cfg: MetricsConfig) -> int:
    return service_main("metrics", cfg, lambda stop: serve(cfg, stop))


def serve(cfg: MetricsConfig, stop: threading.Event) -> int:
    keys.check_binds([cfg.core_bind, cfg.frames_bind, cfg.metrics_bind], cfg.keys, cfg.insecure)
    state = StateDir(cfg.state_dir)  # one core per folder: StartupError if another holds it
    ctx = zmq.Context()
    curve: keys.CoreKeys | None = None
    try:
        if cfg.keys:  # before any socket binds: the ZAP handler must be there for the first handshake
            curve = keys.CoreKeys(ctx, cfg.keys)
            log.info("keys from %s: serving the keys of %s (allowed/)", cfg.keys, ", ".join(curve.allowed))
        server = curve.keys if curve else None
        numbering = Numbering(state.path / "numbering.json")
        router = zmqio.open_socket(
            ctx,
            zmq.ROUTER,
            cfg.core_bind,
            bind=True,
            heartbeat_s=cfg.heartbeat_s,
            max_message_bytes=MAX_MESSAGE_BYTES,
            curve=server,
        )
        # A peer whose TCP connection ZeroMQ re-establishes keeps its session: the new
        # connection takes the identity over at once rather than waiting for the old to time out.
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        frames = zmqio.open_socket(ctx, zmq.PUB, cfg.frames_bind, bind=True, curve=server)
        metrics = zmqio.open_socket(ctx, zmq.PUB, cfg.metrics_bind, bind=True, curve=server)
        delivery = Delivery(state.path / "records.spool", cfg.hold_records) if cfg.recorder else None
    except (SpoolLocked, StartupError) as exc:  # a spool copied in by hand? (the state folder's lock is held)
        if curve is not None:
            curve.stop()
        ctx.destroy(linger=0)
        state.close()
        raise exc if isinstance(exc, StartupError) else StartupError(str(exc)) from None

    core = Core(
        cfg,
        router,
        frames,
        metrics,
        numbering,
        delivery,
        publishers=(bound(frames, cfg.frames_bind), bound(metrics, cfg.metrics_bind)),
    )
    log.info(
        "core %s: sessions on %s, frames on %s, metrics on %s; records %s",
        core.life,
        cfg.core_bind,
        cfg.frames_bind,
        cfg.metrics_bind,
        f"held for a recorder (state in {state.path})" if cfg.recorder else "only published (--no-recorder)",
    )
    exporter = core_exporter(core)
    exporter.start(cfg)
    try:
        core.run(stop)
    finally:
        exporter.stop()
        core.close()
        if curve is not None:
            curve.stop()
        ctx.term()
        state.close()
    return 0


def bound(sock: zmq.Socket, setting: str) -> str:
    """The endpoints a publisher is bound to, as a Welcome names them: a port the system picked
    (a bind to port 0 or *) is the one it got; several endpoints stay a comma-separated list."""
    endpoints = split_addrs(setting)
    if len(endpoints) == 1:
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return ",".join(endpoints)
