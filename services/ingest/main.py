"""ingest: one camera's stream -> captures announced to the core, pictures sent to the workers it assigns.

    camera --HTTP MJPEG--> main thread --session (DEALER)--> the core
                                       --data link (DEALER each)--> workers
    camera --RTSP, raw H.264, a file--> decoding thread --> reader thread (JPEG) --inproc PAIR--> main thread

An MJPEG camera's JPEGs go on as they came, read in the main thread (http_source.py; only
connecting runs in a thread); H.264 and H.265 are decoded with PyAV in a thread of each
connection, watched (av_source.py), and each picture sent on is a JPEG compressed in the reader
thread (pictures.py), so that nothing after the ingest changes.

The ingest binds nothing: it connects to the core (ENCODERS_CORE), which numbers the
frames and decides which worker embeds each, and to those workers' data sockets, which the
core names (docs/PROTOCOL.md, "Protocol 3"). Sockets are not thread-safe, so each belongs
to one thread: the main thread (stream.py) owns the session, the data links, and the camera's
feed (feed.py): the MJPEG camera's socket, or its end of a video reader thread's PAIR (reader.py).
In lossless mode the main thread stops reading the feed while a frame waits for credit: the
camera's socket is not read (or the PAIR fills, and then the reader waits), and TCP
backpressure reaches the camera.

Exit codes: 0 stopped or the stream ended; 1 the camera never answered; 2 cannot start (a
setting, the core's address) or the core refused this stream.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING

import zmq

from encoders.services.ingest.config import IngestConfig
from encoders.shared.exporter import Exporter, Families
from encoders.shared.masking import mask
from encoders.shared.runtime import StartupError, service_main

from .errors import StreamError, UnusableStream
from .feed import Feed
from .http_source import HttpMjpegSource, read_first_frame
from .pictures import JpegEncoder, JpegFrame
from .reader import CameraReader
from .stream import Ingest
from .urls import kind_of

if TYPE_CHECKING:
    from .av_source import AvSource

log = logging.getLogger("encoders.ingest")


def run(cfg: IngestConfig) -> int:
    return service_main("ingest", cfg, lambda stop: serve(cfg, stop), stream=cfg.stream_id)


def serve(cfg: IngestConfig, stop: threading.Event) -> int:
    """The feed, the session, the loop, then the end. 0: stopped or done; 1: the camera failed; 2: refused."""
    try:
        source = open_source(cfg, stop)
    except StreamError as exc:
        raise StartupError(str(exc)) from None
    ctx = zmq.Context()
    # Unwinds in reverse: the session (its socket lingers: the end of the stream still goes
    # out), the feed (a reader thread and its PAIR), then the context, which delivers what lingers.
    with ExitStack() as on_exit:
        on_exit.callback(ctx.term)
        feed: Feed
        if isinstance(source, HttpMjpegSource):
            feed = source
        else:
            to_jpeg = JpegEncoder(cfg.jpeg_quality, cfg.max_frame_bytes, source.counters)
            feed = CameraReader(ctx, source, stop, to_jpeg)
        on_exit.callback(feed.close)
        on_exit.callback(feed.interrupt)
        ingest = Ingest(cfg, ctx, feed, camera=source.counters)  # StartupError: the core's address
        on_exit.callback(ingest.close)
        exporter = Exporter("ingest")
        exporter.collect(lambda f: ingest_families(ingest, f))
        exporter.start(cfg)
        on_exit.callback(exporter.stop)
        log.info("stream %r from %s: captures to the core at %s", cfg.stream_id, mask(cfg.stream), cfg.core)
        outcome = "crashed"
        try:
            ingest.start()
            outcome = ingest.loop(stop, on_turn=exporter.beat)
            exporter.loop_ended()
        finally:
            feed.interrupt()  # the feed lets go of the camera now, not after the end below
            ingest.finish(outcome)  # even after an error: the core must hear where the stream ended
    log.info("ingest stopped: %s", ingest.summary())
    return {"refused": 2, "failed": 1}.get(outcome, 0)


def open_source(cfg: IngestConfig, stop: threading.Event | None = None) -> HttpMjpegSource | AvSource:
    """The camera's source for its URL's kind (urls.py); UnusableStream if the URL names none."""
    if kind_of(cfg.stream) == "mjpeg":
        return HttpMjpegSource.from_config(cfg)
    try:
        from .av_source import AvSource
    except ImportError:
        raise UnusableStream(
            "decoding video needs PyAV: pip install 'encoders[ingest]' (av), or give an MJPEG URL"
        ) from None
    return AvSource.from_config(cfg, stop)


# The ingest's counts as Prometheus counters (name, Stats key, help); shared/exporter.py.
INGEST_COUNTERS = (
    ("encoders_frames_read", "read", "JPEG frames read from the camera"),
    ("encoders_frames_sent", "published", "Frames sent to the core"),
    ("encoders_frames_undelivered", "undelivered", "Frames read while the core was away (counted dropped)"),
    ("encoders_frames_corrupt", "corrupt", "Parts from the camera that were not a JPEG"),
    ("encoders_frames_oversized", "oversized", "Parts larger than ENCODERS_MAX_FRAME_BYTES"),
    ("encoders_reconnects", "reconnects", "Connections to the camera made again"),
    ("encoders_stream_stalls", "stalls", "Connections reopened: no byte, or no complete frame, for too long"),
    ("encoders_camera_bytes", "bytes", "Bytes read from the camera"),
    ("encoders_frames_decoded", "decoded", "Video: pictures decoded"),
    ("encoders_frames_sampled_out", "sampled_out", "Video: frames the sampling left out (counted dropped)"),
    ("encoders_capture_clock_resets", "clock_resets", "Video: capture times anchored again (drift, a break)"),
)


def ingest_families(ingest: Ingest, f: Families) -> None:
    c, stream = ingest.counters(), ingest.stream
    for name, key, doc in INGEST_COUNTERS:
        f.counter(name, doc, c.get(key, 0), stream=stream)
    f.counter("encoders_decode_errors", "Messages that did not decode", c.get("bad_messages", 0), service="ingest")
    f.gauge("encoders_ingest_fps", "Frames read per second, now", c.get("fps"), stream=stream)
    f.gauge("encoders_credits", "Captures a lossless ingest may send now", c.get("credit"), stream=stream)


def check(cfg: IngestConfig) -> int:
    """--test: read one picture and say how it went, in one line; no reconnection.

    0: it came; 1: the camera did not answer or sent nothing usable in time (it may be away);
    2: the URL cannot work as given (not a URL, wrong credentials, a codec not decoded here).
    """
    logging.basicConfig(level=logging.ERROR, format="%(message)s", stream=sys.stderr)  # the verdict says it all
    start = time.monotonic()
    shown = mask(cfg.stream)
    try:
        if kind_of(cfg.stream) == "mjpeg":
            frame = read_first_frame(cfg.stream, connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout)
            what = ""
        else:
            frame, what = read_first_picture(cfg)
    except StreamError as exc:
        print(f"FAILED: {shown}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UnusableStream) else 1
    ms = (time.monotonic() - start) * 1000
    print(
        f"OK: {shown} sent a {frame.width}x{frame.height} {what}JPEG ({len(frame.jpeg) / 1024:.0f} KB) in {ms:.0f} ms"
    )
    return 0


def read_first_picture(cfg: IngestConfig) -> tuple[JpegFrame, str]:
    """A video camera's first picture as the pipeline would get it (JPEG), and its codec ("h264 picture as ")."""
    import dataclasses

    from .av_source import AvSource

    once = dataclasses.replace(cfg, reconnect=False, loop=False)
    source = AvSource(cfg.stream, once, deadline=time.monotonic() + cfg.connect_timeout + cfg.read_timeout)
    frames = source.frames()
    try:
        for picture in frames:
            codec = source.codec
            frame = JpegEncoder(cfg.jpeg_quality, cfg.max_frame_bytes, source.counters)(picture)
            if frame is not None:
                return frame, f"{codec} picture as "
    finally:
        frames.close()
        source.interrupt()
    raise (UnusableStream if source.end_unusable else StreamError)(source.end_reason or "no picture came")
