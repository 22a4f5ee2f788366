"""metrics, the core: every service's session, frames numbered and dispatched, drift, records delivered.

Settings -> the state folder -> sockets -> the core's loop (service.py) -> its drain and shutdown.
"""

from __future__ import annotations

import logging
import threading

import zmq

from encoders.services.metrics.config import MetricsConfig, frames_hwm
from encoders.shared import keys, zmqio
from encoders.shared.core_state import RECORDS_SPOOL, StateDir
from encoders.shared.messages import largest_part
from encoders.shared.runtime import StartupError, service_main
from encoders.shared.settings import split_addrs
from encoders.shared.spool import SpoolLocked

from .delivery import Delivery
from .exported import core_exporter
from .numbering import Numbering
from .service import Core

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
            log.info(
                "keys from %s: serving the keys of %s (allowed/; each in the role its name begins with)",
                cfg.keys,
                ", ".join(curve.allowed.names()),
            )
        numbering = Numbering(state.path / "numbering.json")
        router = zmqio.open_socket(
            ctx,
            zmq.ROUTER,
            cfg.core_bind,
            bind=True,
            # No ZMTP heartbeats (ZeroMQ's own, below the sessions'): their timeout drops the connection of
            # a peer that is paused or behind in reading (a recorder stopped, or catching up), and libzmq
            # 4.3 may then abort that peer as it reads the multipart messages still queued ("!_more",
            # src/fq.cpp:80; zeromq/libzmq#3937, #4767). The sessions' own heartbeats judge silence
            # (shared/session.py); a peer's socket keeps its ZMTP heartbeats to replace a dead link.
            # A capture's JPEG, a part of a worker's Results, or a header.
            max_message_bytes=largest_part(cfg.max_frame_bytes, batches=True),  # Pictures: a JPEG a part
            curve=curve.door("core") if curve else None,
        )
        # A peer whose TCP connection ZeroMQ re-establishes keeps its session: the new
        # connection takes the identity over at once rather than waiting for the old to time out.
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Publishers' peers send only subscriptions. A subscriber that does not keep up is queued at
        # most --frames-buffer-mb of frames (ZeroMQ's default, 1,000, was 1.36 GB of 1 MB frames).
        # The frames publisher is an XPUB: the core sees which streams are watched, and asks their
        # ingests for previews (previews.py).
        frames = zmqio.open_socket(
            ctx,
            zmq.XPUB,
            cfg.frames_bind,
            bind=True,
            sndhwm=frames_hwm(cfg.frames_buffer_mb),
            max_message_bytes=zmqio.SUBSCRIPTION_MAX_BYTES,
            curve=curve.door("frames") if curve else None,
        )
        metrics = zmqio.open_socket(
            ctx,
            zmq.PUB,
            cfg.metrics_bind,
            bind=True,
            max_message_bytes=zmqio.SUBSCRIPTION_MAX_BYTES,
            curve=curve.door("metrics") if curve else None,
        )
        delivery = Delivery(state.path / RECORDS_SPOOL, cfg.hold_records) if cfg.recorder else None
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
        state_dir=state.path,  # where the run the last recorder recorded is kept
        publishers=(bound(frames, cfg.frames_bind), bound(metrics, cfg.metrics_bind)),
        keys=curve.allowed if curve else None,
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
        exporter.loop_ended()
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
