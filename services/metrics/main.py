"""metrics: collect every worker's embeddings, restore order, compute drift, publish records."""

from __future__ import annotations

import time
from collections import deque

import zmq

from encoders.services.metrics.config import MetricsConfig
from encoders.shared import zmqio
from encoders.shared.messages import EndOfStream, MetricsRecord, Stats
from encoders.shared.runtime import log_settings, setup_logging, stop_on_signals

from .scenes import SceneRule
from .streams import Streams

# The recorder must get every record. ZeroMQ queues this many for it; past that (or while no
# recorder is connected) records wait in a backlog here instead of blocking the pipeline.
RECORDS_HWM = 100_000
# At shutdown, how long to keep offering the backlog to a recorder.
FLUSH_S = 10.0


def run(cfg: MetricsConfig) -> int:
    log = setup_logging("metrics")
    log_settings(log, "metrics", cfg)
    stop = stop_on_signals()
    ctx = zmq.Context()
    inbox = zmqio.open_socket(ctx, zmq.PULL, cfg.metrics_in_bind, bind=True)
    pub = zmqio.open_socket(ctx, zmq.PUB, cfg.metrics_bind, bind=True)
    # 'none' rather than '': an empty environment variable reads as unset, i.e. the default.
    wants_recorder = cfg.records_bind.lower() not in ("", "none")
    records = (
        zmqio.open_socket(ctx, zmq.PUSH, cfg.records_bind, bind=True, sndhwm=RECORDS_HWM) if wants_recorder else None
    )
    streams = Streams(cfg.rolling_window, cfg.max_wait, SceneRule.from_config(cfg))
    counters = {"bad_messages": 0, "records": 0}
    backlog: deque = deque()
    warned = [0.0]  # when the backlog was last reported
    last_log = last_stats = time.monotonic()
    log.info(
        "metrics listening on %s; records on %s", cfg.metrics_in_bind, cfg.records_bind if wants_recorder else "(none)"
    )

    def flush_backlog() -> None:
        while backlog:
            try:
                zmqio.send(records, backlog[0], flags=zmq.NOBLOCK)
            except zmq.Again:
                if time.monotonic() - warned[0] > 5:
                    warned[0] = time.monotonic()
                    log.warning("recorder not connected or not keeping up: holding %d records", len(backlog))
                return
            backlog.popleft()

    def publish(out: list) -> None:
        for msg in out:
            zmqio.send(pub, msg, topic=True)
            if records is not None:
                backlog.append(msg)
            if isinstance(msg, MetricsRecord):
                counters["records"] += 1
            elif isinstance(msg, EndOfStream):
                log.info("stream %s ended: %s", msg.stream, msg.counts)

    try:
        while not stop.is_set():
            if inbox.poll(50):
                while inbox.poll(0):  # take everything waiting before releasing
                    msg, _ = zmqio.receive(inbox, counters=counters, copy=True)  # embeddings: ~2 KB
                    if msg is not None:
                        streams.accept(msg)
            publish(streams.release())
            flush_backlog()
            if cfg.exit_after_streams and not backlog and streams.ended() >= cfg.exit_after_streams:
                log.info("all %d streams ended", streams.ended())
                break
            now = time.monotonic()
            if now - last_stats > 1:
                last_stats = now
                for name in streams.streams:
                    zmqio.send(pub, Stats("metrics", name, streams.totals(name)), topic=True)
            if now - last_log > 10:
                last_log = now
                for name in streams.streams:
                    log.info("%s: %s", name, streams.totals(name))
    finally:
        publish(streams.release())
        deadline = time.monotonic() + FLUSH_S
        while backlog and time.monotonic() < deadline:
            flush_backlog()
            time.sleep(0.01)
        if backlog:
            log.error("%d records never reached a recorder", len(backlog))
        log.info("metrics done: %d records published, %d bad messages", counters["records"], counters["bad_messages"])
        inbox.close(0)
        pub.close()
        if records is not None:
            records.close()  # lingers so the recorder receives the last records
        ctx.term()
    return 0
