"""ingest: one camera's MJPEG stream -> Frame messages, published and handed to encoder workers.

    camera --HTTP--> reader thread --inproc PAIR--> main thread --PUB--> viewers, recorder
                                                               --ROUTER--> encoder workers (by credit)
                                                               --PUSH--> metrics (Dropped, EndOfStream)

Sockets are not thread-safe, so each belongs to one thread: the reader thread (reader.py)
owns the HTTP connection and its end of the PAIR, over which it sends ingest's own reader
events; the main thread (stream.py) owns everything else. In lossless mode the main thread
stops reading the PAIR while a frame waits for a worker; the small HWMs then block the
reader, which stops reading the socket, and TCP backpressure reaches the camera.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import ExitStack

import zmq

from encoders.services.ingest.config import IngestConfig
from encoders.shared import zmqio
from encoders.shared.runtime import StartupError, service_main

from .http_source import HttpMjpegSource, StreamError, check_url, read_first_frame
from .reader import CameraReader
from .stream import Ingest

log = logging.getLogger("encoders.ingest")

# Before the first frame: subscribers and workers started earlier are retrying their connect
# (ZeroMQ retries every 100 ms); this lets them in, so they get frame 0 and workers' credit
# is counted before a frame would be dropped for the lack of it.
PEER_GRACE = 0.3
PUB_HWM = 100  # frames queued per slow subscriber before PUB drops for it (~4 MB at 640x480)
ROUTER_HWM = 1000  # far above any credit a worker grants: reaching it means the worker is stuck


def run(cfg: IngestConfig) -> int:
    return service_main("ingest", cfg, lambda stop: serve(cfg, stop))


def serve(cfg: IngestConfig, stop: threading.Event) -> int:
    """Sockets, the reader, the loop, then shutdown. 0: stopped or done; 1: the camera failed."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # we log connections ourselves, with the reason
    try:
        source = HttpMjpegSource.from_config(cfg, stop)
    except StreamError as exc:
        raise StartupError(str(exc)) from None
    ctx = zmq.Context()
    # Unwinds in reverse: the reader thread, then the sockets (with the linger set by
    # open_socket: queued notices still go out), then the context, which delivers them.
    with ExitStack() as on_exit:
        on_exit.callback(ctx.term)
        pub = on_exit.enter_context(zmqio.open_socket(ctx, zmq.PUB, cfg.frames_bind, bind=True, sndhwm=PUB_HWM))
        router = on_exit.enter_context(zmqio.open_socket(ctx, zmq.ROUTER, cfg.work_bind, bind=True, sndhwm=ROUTER_HWM))
        push = on_exit.enter_context(zmqio.open_socket(ctx, zmq.PUSH, cfg.metrics_in, bind=False))
        reader = on_exit.enter_context(CameraReader(ctx, source, stop))
        ingest = Ingest(cfg, pub, router, push, camera=source.counters)
        try:
            ingest.take_credits_for(PEER_GRACE, stop)
            ingest.start()
            reader.start()
            outcome = ingest.loop(reader, stop)
        finally:
            reader.interrupt()  # the reader lets go of the camera now, not after the shutdown below
            ingest.finish()  # even after an error: metrics must hear where the stream ended
    log.info("ingest stopped: %s", ingest.summary())
    return 1 if outcome == "failed" else 0


def check(cfg: IngestConfig) -> int:
    """--test: read one JPEG and say how it went; no reconnection."""
    logging.basicConfig(level=logging.ERROR, format="%(message)s", stream=sys.stderr)  # the verdict says it all
    start = time.monotonic()
    try:
        check_url(cfg.stream)
        frame = read_first_frame(cfg.stream, connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout)
    except StreamError as exc:
        print(f"FAILED: {cfg.stream}: {exc}", file=sys.stderr)
        return 1
    ms = (time.monotonic() - start) * 1000
    print(f"OK: {cfg.stream} sent a {frame.width}x{frame.height} JPEG ({len(frame.jpeg) / 1024:.0f} KB) in {ms:.0f} ms")
    return 0
