"""The core's Prometheus metrics (shared/exporter.py): read from its counts at each scrape.

The names and labels here are the ones README.md lists and docs/grafana-dashboard.json uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from encoders.shared.exporter import LATENCY_BUCKETS, Exporter, Families
from encoders.shared.messages import MetricsRecord

if TYPE_CHECKING:
    from .service import Core

OUTCOMES = {
    "published": "Frames the core numbered (every capture it took)",
    "embedded": "Frames embedded and put in order",
    "dropped": "Frames dropped: a newer one replaced them while no worker had room, or sent while the core was away",
    "skipped": "Frames a worker could not embed (a JPEG that does not decode)",
    "lost": "Frames given up: a worker died holding them, or they never came",
    "late": "Results that came after their frame was given up",
}


def core_exporter(core: Core) -> Exporter:
    """The core's registry: its counts at each scrape, and the capture-to-record latency as it goes."""
    exporter = Exporter("metrics")
    latency = exporter.histogram(
        "encoders_capture_to_embedded_seconds",
        "From the camera's capture to the core's record of its embedding",
        ["stream"],
        LATENCY_BUCKETS,
    )

    streams: dict[str, Any] = {}  # the histogram's child by stream: labels() costs more than a dict, a record

    def observe(rec: MetricsRecord) -> None:
        child = streams.get(rec.stream)
        if child is None:
            child = streams[rec.stream] = latency.labels(rec.stream)
        child.observe(max(0.0, rec.t_encoded - rec.t_capture))

    core.on_record = observe
    core.on_turn = exporter.beat  # /healthz tells a wedged loop (shared/exporter.py)
    exporter.collect(lambda f: core_families(core, f))
    return exporter


def core_families(core: Core, f: Families) -> None:
    broker = core.broker
    # Counters of every stream this core has numbered, ended ones included (their last counts:
    # a counter that vanished would take the stream's final totals with it); gauges of live ones.
    for name in core.streams.names():
        totals: dict[str, Any] = dict(core.streams.totals(name))
        for outcome, doc in OUTCOMES.items():
            f.counter(f"encoders_frames_{outcome}", doc, totals.get(outcome) or 0, stream=name)
    for name, state in list(core.streams.streams.items()):
        f.gauge("encoders_stream_fps", "Frames embedded per second, now", state.drift.fps(), stream=name)
        f.gauge("encoders_frames_waiting", "Frames numbered and waiting for a worker", broker.queued(name), stream=name)
        f.gauge(
            "encoders_outcomes_waiting", "Outcomes waiting behind a missing one", state.order.waiting(), stream=name
        )
        offset = core.ingests.clocks.offsets.get(name)
        if offset is not None:
            f.gauge(
                "encoders_clock_offset_seconds",
                "How far the stream's ingest's clock is ahead of the core's (behind: negative), at its latest capture",
                offset,
                stream=name,
            )
        rolling = state.drift.rolling()
        f.gauge("encoders_drift_rolling_mean", "Mean drift over the rolling window", rolling.get("mean"), stream=name)
        f.gauge("encoders_drift_rolling_std", "Drift's standard deviation over it", rolling.get("std"), stream=name)
    f.gauge("encoders_workers", "Workers joined", len(broker.workers))
    f.gauge("encoders_workers_capacity", "Frames the workers can hold, together", broker.capacity)
    f.gauge("encoders_frames_in_flight", "Frames in workers' hands", broker.in_use)
    f.counter("encoders_records", "Records the core published", core.counters["records"])
    f.counter("encoders_decode_errors", "Messages that did not decode", core.complain.counts.get("bad_messages", 0),
              service="metrics")  # fmt: skip
    for kind, n in {"bad_messages": 0, **core.complain.counts}.items():  # a family from the start
        f.counter("encoders_refused_messages", "Messages refused or dropped, by kind", n, kind=kind)
    f.counter("encoders_streams_refused", "Cameras refused past ENCODERS_MAX_STREAMS", core.ingests.streams_refused)
    for worker, n in list(core.model.refused_results.items()):
        f.counter("encoders_results_refused", "Embeddings of another model or length than the pipeline's, by worker",
                  n, worker=worker)  # fmt: skip
    for role in ("ingest", "worker", "recorder", "viewer", "control"):
        f.gauge("encoders_sessions", "Sessions with the core, by role", len(core.sessions.of_role(role)), role=role)
    if core.delivery is not None:
        stats = core.delivery.stats()
        f.gauge("encoders_records_held", "Records held in memory for the recorder", stats["records_held"])
        f.gauge("encoders_spool_bytes", "Bytes of records spooled for the recorder", stats["spool_bytes"],
                service="metrics")  # fmt: skip
