"""pisim: stands in for the Raspberry Pi camera, serving /stream.mjpg and /health.

    encoders pisim --port 8000                      # synthetic moving scene
    encoders pisim --source clip.mp4 --fps 30        # a video file, looping
    encoders pisim --source photos/ --fps 2          # a folder of images, looping
    encoders pisim --h264-port 8888                  # also raw H.264 at tcp://HOST:8888 (h264.py)

In-process (tests, the all-in-one demo): ``server, url = serve_in_thread(cfg)`` and
``server.close()``.
"""

from __future__ import annotations

import logging
import threading

from encoders.services.pisim.config import PisimConfig
from encoders.shared.runtime import StartupError, service_main

from .h264 import H264Server
from .server import PisimServer, make_server, serve_in_thread
from .sources import SourceError

__all__ = ["PisimServer", "SourceError", "make_server", "run", "serve_in_thread"]

log = logging.getLogger("encoders.pisim")


def run(cfg: PisimConfig) -> int:
    return service_main("pisim", cfg, lambda stop: serve(cfg, stop))


def serve(cfg: PisimConfig, stop: threading.Event) -> int:
    try:
        server = make_server(cfg)
    except SourceError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from None
    try:
        url = server.start()
        log.info(
            "serving %s at %s/stream.mjpg (listening on %s port %d; health: %s/health)",
            server.source.description,
            url,
            cfg.host or "*",
            server.port,
            url,
        )
        h264 = None
        if cfg.h264_port:
            try:
                h264 = H264Server(cfg, server.source)
            except SourceError as exc:
                raise StartupError(str(exc)) from None
            except OSError as exc:
                raise StartupError(f"cannot listen on {cfg.host}:{cfg.h264_port}: {exc}") from None
            log.info("serving raw H.264 at %s (as rpicam-vid --listen does)", h264.start())
        try:
            stop.wait()
        finally:
            if h264 is not None:
                h264.close()
    finally:
        server.close()
    h = server.health()
    log.info("pisim stopped: %d frames served to %d client(s)", h["frames_served"], h["clients_served"])
    return 0
