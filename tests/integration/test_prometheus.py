"""Every service's Prometheus metrics (issue #15), scraped from the running processes and read
with prometheus_client's own parser: the names the README lists and the dashboard uses, and
counts that agree with summary.json at the end of a run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import Service, free_port, wait_for
from .pipeline import Pipeline, collect, subscribe

FRAMES = 40
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def metrics_url(service: Service) -> str:
    """The address the service said its metrics are on (any free port in the tests)."""
    wait_for(lambda: "Prometheus metrics on" in service.output(), 30, "the metrics server")
    match = re.search(r"Prometheus metrics on (http://\S+/metrics)", service.output())
    assert match, service.output()[-2000:]
    return match.group(1)


def scrape(url: str) -> dict[str, float]:
    """Every sample: 'name{label="value",...}' -> value, as Prometheus would store it."""
    text = httpx.get(url, timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


@pytest.mark.timeout(240)
def test_every_service_serves_metrics_that_agree_with_the_runs_summary(
    service, tiny_model, tmp_path, database, sockets
):
    pipeline = Pipeline(service, tiny_model, tmp_path, database)
    core = pipeline.start_core()
    recorder = pipeline.start_recorder()
    records = subscribe(sockets, pipeline.metrics_pub)
    worker = pipeline.start_worker("w0")
    viewer = service("view", "--core", pipeline.core, "--web", f"127.0.0.1:{free_port()}", env={"DISPLAY": ""})
    wait_for(lambda: "Prometheus metrics on" in viewer.output(), 30, "the viewer")
    ingest = pipeline.start_ingest(0, pipeline.start_camera(0, fps=15), "--max-frames", str(FRAMES), "--lossless")
    services = {"core": core, "recorder": recorder, "worker": worker, "viewer": viewer}
    urls = {name: metrics_url(s) for name, s in services.items()}
    ingest_url = metrics_url(ingest)  # scraped while it reads the camera (it exits at --max-frames)
    wait_for(lambda: scrape(ingest_url)['encoders_frames_read_total{stream="cam0"}'] >= 1, 20, "frames read")
    seen_ingest = scrape(ingest_url)
    assert 'encoders_reconnects_total{stream="cam0"}' in seen_ingest
    # A live stream's gauges (fps, queue, drift) are served while it runs; an ended one keeps its counters.

    def live_core() -> dict[str, float] | None:
        c = scrape(urls["core"])
        return c if 'encoders_drift_rolling_mean{stream="cam0"}' in c else None

    core_live = wait_for(live_core, 60, "the live stream's drift")
    collect(records, until_eos=1)
    wait_for(
        lambda: scrape(urls["recorder"]).get('encoders_rows_recorded_total{stream="cam0"}') == FRAMES,
        30,
        "the recorder to write every row",
    )
    viewer_records = "encoders_viewer_metrics_received_total"
    wait_for(lambda: scrape(urls["viewer"]).get(viewer_records, 0) >= 1, 20, "the viewer's records")
    seen = {name: scrape(url) for name, url in urls.items()}
    assert seen["viewer"]["encoders_viewer_frames_received_total"] >= 1 and "encoders_web_clients" in seen["viewer"]
    done = pipeline.stop()
    assert done.returncode == 0, done.stderr
    assert pipeline.run_dir is not None
    summary = json.loads((pipeline.run_dir / "summary.json").read_text())["streams"]["cam0"]
    frames = summary["frames"]

    c = seen["core"]
    for outcome in ("published", "embedded", "dropped", "skipped", "lost"):
        assert c[f'encoders_frames_{outcome}_total{{stream="cam0"}}'] == frames[outcome], outcome
    assert c['encoders_capture_to_embedded_seconds_count{stream="cam0"}'] == frames["embedded"] == FRAMES
    assert c["encoders_workers"] == 1 and c["encoders_records_total"] >= FRAMES
    assert seen["recorder"]['encoders_rows_recorded_total{stream="cam0"}'] == summary["db_rows"]
    assert seen["recorder"]["encoders_db_write_seconds_count"] >= 1
    w = seen["worker"]
    assert w['encoders_worker_frames_embedded_total{worker="w0"}'] == FRAMES
    assert (
        w["encoders_batch_size_sum"] == FRAMES and w["encoders_encode_seconds_count"] == w["encoders_batch_size_count"]
    )
    # The dashboard shipped uses only names the services serve.
    served = {re.sub(r"\{.*", "", k) for s in [*seen.values(), seen_ingest, core_live] for k in s}
    served |= {re.sub(r"_(bucket|count|sum)$", "", n) for n in served}
    used = set(re.findall(r"\b(encoders_[a-z_]+)", DASHBOARD.read_text()))
    assert used and used <= served, f"the dashboard uses names nobody serves: {sorted(used - served)}"


def core_alone(service, folder: Path, **env: str) -> Service:
    """A core on ipc endpoints of its own folder (no port to collide with), to watch its metrics server."""
    folder.mkdir()
    binds = {flag: f"ipc://{folder / flag}" for flag in ("--core-bind", "--frames-bind", "--metrics-bind")}
    return service("metrics", "--state-dir", str(folder), *(x for kv in binds.items() for x in kv), env=env)


def test_none_turns_the_metrics_off_and_a_port_in_use_only_warns(service, tmp_path):
    off = core_alone(service, tmp_path / "a", ENCODERS_PROMETHEUS_PORT="none")
    wait_for(lambda: "core " in off.output(), 20, "the core to start")
    assert "Prometheus" not in off.output()
    first = core_alone(service, tmp_path / "b")
    port = metrics_url(first).rsplit(":", 1)[1].split("/")[0]
    second = core_alone(service, tmp_path / "c", ENCODERS_PROMETHEUS_PORT=port)
    wait_for(lambda: "Prometheus metrics off" in second.output(), 20, "the warning")
    assert "ENCODERS_PROMETHEUS_PORT" in second.output() and second.proc.poll() is None  # the core runs on
    for s in (off, first, second):
        assert s.stop() == 0
