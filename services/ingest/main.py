"""ingest: one camera's MJPEG stream -> Frame messages, published and handed to encoder workers.

    camera --HTTP--> reader thread --inproc PAIR--> main thread --PUB--> viewers, recorder
                                                               --ROUTER--> encoder workers (by credit)
                                                               --PUSH--> metrics (Dropped, EndOfStream)

Sockets are not thread-safe, so each belongs to one thread: the reader thread owns the
HTTP connection and its end of the PAIR; the main thread owns everything else. In
lossless mode the main thread stops reading the PAIR while a frame waits for a worker;
the small HWMs then block the reader, which stops reading the socket, and TCP
backpressure reaches the camera.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import zmq

from encoders.services.ingest.config import IngestConfig
from encoders.shared import zmqio
from encoders.shared.messages import Credit, Dropped, EndOfStream, Frame, Stats, StreamStart
from encoders.shared.runtime import log_settings, setup_logging, stop_on_signals

from .dispatch import Dispatcher, WorkerGone
from .http_source import HttpMjpegSource, StreamError, check_url, read_first_frame

log = logging.getLogger("encoders.ingest")

STATS_EVERY = 1.0  # seconds between Stats messages
LOG_EVERY = 10.0  # seconds between summary log lines
POLL_MS = 100
SHUTDOWN_CREDIT_WAIT = 1.0  # how long a frame still pending at shutdown waits for a worker
# Before the first frame: subscribers and workers started earlier are retrying their connect
# (ZeroMQ retries every 100 ms); this lets them in, so they get frame 0 and workers' credit
# is counted before a frame would be dropped for the lack of it.
PEER_GRACE = 0.3
NOTICE_WAIT = 2.0  # how long the final EndOfStream may wait for room on the PUSH socket
PUB_HWM = 100  # frames queued per slow subscriber before PUB drops for it (~4 MB at 640x480)
ROUTER_HWM = 1000  # far above any credit a worker grants: reaching it means the worker is stuck


def run(cfg: IngestConfig) -> int:
    setup_logging("ingest")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # we log connections ourselves, with the reason
    log_settings(log, "ingest", cfg)
    try:
        source = HttpMjpegSource.from_config(cfg)
    except StreamError as exc:
        log.error("%s", exc)
        return 2
    stop = stop_on_signals()
    source.stop = stop
    ctx = zmq.Context()
    sockets: list[zmq.Socket] = []
    reader: threading.Thread | None = None
    try:
        pub = zmqio.open_socket(ctx, zmq.PUB, cfg.frames_bind, bind=True, sndhwm=PUB_HWM)
        sockets.append(pub)
        router = zmqio.open_socket(ctx, zmq.ROUTER, cfg.work_bind, bind=True, sndhwm=ROUTER_HWM)
        sockets.append(router)
        push = zmqio.open_socket(ctx, zmq.PUSH, cfg.metrics_in, bind=False)
        sockets.append(push)
        inbox_addr = f"inproc://ingest-reader-{id(source)}"
        inbox = zmqio.open_socket(ctx, zmq.PAIR, inbox_addr, bind=True, rcvhwm=1, linger=0)
        sockets.append(inbox)
        outbox = ReaderOutbox(zmqio.open_socket(ctx, zmq.PAIR, inbox_addr, bind=False, sndhwm=1, linger=0))
    except RuntimeError as exc:
        log.error("%s", exc)
        for sock in sockets:
            sock.close(0)
        ctx.term()
        return 2
    ingest = Ingest(cfg, pub, router, push)
    outcome = "failed"
    try:
        ingest.take_credits_for(PEER_GRACE, stop)
        ingest.start()
        reader = threading.Thread(
            target=read_camera, args=(outbox, source, cfg.stream_id, stop), name="camera-reader", daemon=True
        )
        reader.start()
        outcome = ingest.loop(inbox, source, stop)
    finally:
        stop.set()  # the reader lets go of the camera now, not after the shutdown below
        source.interrupt()
        try:
            ingest.finish(source)  # even after an error: metrics must hear where the stream ended
        finally:
            for sock in sockets:
                sock.close()  # with the linger set by open_socket: queued notices still go out
            if reader is not None:
                # A read blocked in httpx was interrupted above; a connect in progress cannot
                # be, so the reader may still be in it: its socket is closed for it then, as
                # the context (which delivers what lingers) cannot end while it is open.
                reader.join(1.0)
                if reader.is_alive():
                    log.info("the camera has not answered yet: leaving that connection attempt behind")
            outbox.close()
            ctx.term()
    log.info("ingest stopped: %s", ingest.summary(source))
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


# -- the reader thread -----------------------------------------------------------------------


class ReaderOutbox:
    """The reader thread's end of the PAIR.

    Only the reader uses it, except at shutdown: a reader stuck in a connect cannot be
    interrupted, so the main thread closes the socket for it. The lock makes that a
    hand-over between threads (what ZeroMQ allows) instead of a concurrent use.
    """

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock: zmq.Socket | None = sock
        self._lock = threading.Lock()

    def send(self, msg, stop: threading.Event) -> bool:
        """Send, blocking while the main thread is not reading (lossless backpressure), unless stopped."""
        while not stop.is_set():
            with self._lock:
                if self._sock is None:
                    return False
                if self._sock.poll(POLL_MS, zmq.POLLOUT):
                    zmqio.send(self._sock, msg, flags=zmq.NOBLOCK)
                    return True
        return False

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close(0)
                self._sock = None


def read_camera(outbox: ReaderOutbox, source: HttpMjpegSource, stream_id: str, stop: threading.Event) -> None:
    """Thread: frames from the camera to the main thread, then an EndOfStream saying why it ended.

    Frames cross the PAIR as Frame messages with seq -1: the main thread numbers only
    what it publishes.
    """
    outcome = "stopped"
    try:
        for f in source.frames():
            if not outbox.send(Frame(stream_id, -1, f.t_arrival, f.width, f.height, f.jpeg), stop):
                break
        if not stop.is_set():
            outcome = "ended" if source.ever_connected else "failed"
    except Exception:
        log.exception("the camera reader crashed")
        outcome = "failed"
    finally:
        outbox.send(EndOfStream(stream_id, -1, {"outcome": outcome, "reason": source.end_reason}), stop)
        outbox.close()


# -- the main thread -------------------------------------------------------------------------


class Ingest:
    """The main thread's state: numbering, publishing, dispatching, notices and counters."""

    def __init__(self, cfg: IngestConfig, pub: zmq.Socket, router: zmq.Socket, push: zmq.Socket) -> None:
        self.cfg = cfg
        self.stream = cfg.stream_id
        self.pub, self.router, self.push = pub, router, push
        self.names: dict[bytes, str] = {}  # worker identity -> the name it gives in Credit
        self.dispatcher: Dispatcher[Frame] = Dispatcher(
            self._send_to_worker, lossless=cfg.lossless, name=lambda w: repr(self.names.get(w, w))
        )
        self.next_seq = 0
        self.counts = dict.fromkeys(("published", "dropped", "notices_lost", "bad_messages"), 0)
        self.started = time.monotonic()
        self._rate = (self.started, 0, 0.0)  # (when, published then, frames per second since the last one)

    # -- protocol ----------------------------------------------------------------------------

    def start(self) -> None:
        start = StreamStart(stream=self.stream, first_seq=0, url=self.cfg.stream)
        self._notify(start)
        zmqio.send(self.pub, start, topic=True)
        log.info(
            "stream %r: publishing frames on %s, work for encoders on %s, notices to %s",
            self.stream,
            self.cfg.frames_bind,
            self.cfg.work_bind,
            self.cfg.metrics_in,
        )

    def take_credits_for(self, seconds: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self.router.poll(int(left * 1000) + 1, zmq.POLLIN):
                self._take_credits()

    def loop(self, inbox: zmq.Socket, source: HttpMjpegSource, stop: threading.Event) -> str:
        """Until stopped, max_frames, or the reader ends. Returns 'stopped', 'max_frames', 'ended' or 'failed'."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(inbox, zmq.POLLIN)
        reading = True
        next_stats = time.monotonic() + STATS_EVERY
        next_log = time.monotonic() + LOG_EVERY
        while not stop.is_set():
            if self.dispatcher.accepting != reading:
                reading = self.dispatcher.accepting  # lossless: stop reading while a frame waits
                poller.modify(inbox, zmq.POLLIN if reading else 0)
            events = dict(poller.poll(POLL_MS))
            if self.router in events:
                self._take_credits()
            if reading and inbox in events:
                msg, _ = zmqio.receive(inbox)
                if isinstance(msg, Frame):
                    self._publish(msg)
                    if self.cfg.max_frames and self.next_seq >= self.cfg.max_frames:
                        log.info("published %d frames (max_frames): stopping", self.next_seq)
                        return "max_frames"
                elif isinstance(msg, EndOfStream):
                    outcome = msg.counts.get("outcome", "ended")
                    if outcome != "stopped":
                        log.info("the camera stream has ended (%s)", msg.counts.get("reason") or outcome)
                        return outcome
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_EVERY
                self._measure_rate(now)
                zmqio.send(self.pub, Stats("ingest", self.stream, self.counters(source)), topic=True)
            if now >= next_log:
                next_log = now + LOG_EVERY
                log.info("%s", self.summary(source))
        return "stopped"

    def _measure_rate(self, now: float) -> None:
        when, published, _ = self._rate
        if now > when:
            self._rate = (now, self.counts["published"], (self.counts["published"] - published) / (now - when))

    def finish(self, source: HttpMjpegSource) -> None:
        """Shutdown: give a pending frame ~1 s to find a worker, then say where the stream ended."""
        deadline = time.monotonic() + SHUTDOWN_CREDIT_WAIT
        while self.dispatcher.waiting and time.monotonic() < deadline:
            if self.router.poll(int(max(0.0, deadline - time.monotonic()) * 1000) + 1, zmq.POLLIN):
                self._take_credits()
        for frame in self.dispatcher.take_waiting():
            self._drop(frame, "shutdown")
        counts = self.eos_counts(source)
        eos = EndOfStream(self.stream, self.next_seq - 1, counts)
        zmqio.send(self.pub, eos, topic=True)
        if self.push.poll(int(NOTICE_WAIT * 1000), zmq.POLLOUT):
            zmqio.send(self.push, eos, flags=zmq.NOBLOCK)
        else:
            log.error("metrics (%s) is not taking messages: the end-of-stream notice is lost", self.cfg.metrics_in)
        log.info("end of stream %r: last seq %d, %s", self.stream, self.next_seq - 1, counts)

    # -- frames ------------------------------------------------------------------------------

    def _publish(self, raw: Frame) -> None:
        frame = Frame(self.stream, self.next_seq, raw.t_capture, raw.width, raw.height, raw.jpeg)
        self.next_seq += 1
        self.counts["published"] += 1
        zmqio.send(self.pub, frame, topic=True)
        displaced = self.dispatcher.offer(frame)
        if displaced is not None:
            self._drop(displaced, "no free encoder")

    def _send_to_worker(self, worker: bytes, frame: Frame) -> None:
        try:
            zmqio.send(self.router, frame, prefix=[worker], flags=zmq.NOBLOCK)
        except zmq.Again:
            # Its queue is full although it holds credit: the worker has stopped reading.
            raise WorkerGone("its queue is full") from None
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise WorkerGone("disconnected") from None
            raise

    def _take_credits(self) -> None:
        while self.router.poll(0, zmq.POLLIN):
            msg, identity = zmqio.receive(self.router, routed=True, counters=self.counts)
            if isinstance(msg, Credit):
                if identity not in self.dispatcher.ledger:
                    self.names[identity] = msg.worker
                    log.info("encoder worker %r joined with %d credit(s)", msg.worker, msg.n)
                self.dispatcher.credit(identity, msg.n)
            elif msg is not None:
                self.counts["bad_messages"] += 1
                log.warning("ignored a %s message on the work socket (only credit is expected)", msg.KIND)

    def _drop(self, frame: Frame, reason: str) -> None:
        self.counts["dropped"] += 1
        self._notify(Dropped(self.stream, frame.seq, reason))

    def _notify(self, msg) -> None:
        """A notice for metrics. Never blocks the stream: if metrics is away and the queue full, it is lost."""
        try:
            zmqio.send(self.push, msg, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.counts["notices_lost"] += 1
            if self.counts["notices_lost"] in (1, 10, 100) or self.counts["notices_lost"] % 1000 == 0:
                log.warning(
                    "metrics (%s) is not taking notices: %d lost so far",
                    self.cfg.metrics_in,
                    self.counts["notices_lost"],
                )

    # -- counters ----------------------------------------------------------------------------

    def eos_counts(self, source: HttpMjpegSource) -> dict[str, int]:
        c = source.counters
        return {
            "published": self.counts["published"],
            "dispatched": self.dispatcher.dispatched,
            "dropped": self.counts["dropped"],
            "corrupt": c["corrupt"],
            "reconnects": c["reconnects"],
            "truncated": c["truncated"],
        }

    def counters(self, source: HttpMjpegSource) -> dict:
        """What Stats carries: the end-of-stream counts, the current state, and the frame rate."""
        ledger = self.dispatcher.ledger
        return {
            **self.eos_counts(source),
            "pending": len(self.dispatcher.waiting),
            "workers": len(ledger.workers),
            "credits": ledger.total,
            "workers_gone": self.dispatcher.workers_gone,
            "notices_lost": self.counts["notices_lost"],
            "bad_messages": self.counts["bad_messages"],
            "bytes": source.counters["bytes"],
            "fps": round(self._rate[2], 2),
        }

    def summary(self, source: HttpMjpegSource) -> str:
        elapsed = max(1e-6, time.monotonic() - self.started)
        c = source.counters
        return (
            f"{self.counts['published']} frames published ({self._rate[2]:.1f}/s now, "
            f"{self.counts['published'] / elapsed:.1f}/s overall), {self.dispatcher.dispatched} to encoders, "
            f"{self.counts['dropped']} dropped, {c['corrupt']} corrupt, {c['reconnects']} reconnects; "
            f"{len(self.dispatcher.ledger.workers)} worker(s) holding {self.dispatcher.ledger.total} credit(s)"
        )
