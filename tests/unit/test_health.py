"""Health checks: a service's /healthz beside its /metrics, and `encoders health` asking it.

A real exporter on a real port, asked over HTTP by the real command (compose's health checks
run exactly that in each container).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from encoders.shared.exporter import Exporter
from encoders.shared.health import NoHealthPort, health_url, local_address
from encoders.shared.settings import Exported

from ..conftest import free_port


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    exporter = Exporter("recorder")
    exporter.collect(lambda f: f.counter("encoders_test_total", "A count", 3))
    exporter.start(Exported(prometheus_port=str(free_port())))
    yield exporter
    exporter.stop()


def ask(port: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "encoders", "health", "recorder", "--prometheus-port", str(port), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_healthz_answers_beside_the_metrics_and_says_what_is_wrong(exporter):
    base = f"http://127.0.0.1:{exporter.port}"
    assert httpx.get(f"{base}/healthz").json() == {"service": "recorder", "status": "ok"}
    assert "encoders_test_total 3.0" in httpx.get(f"{base}/metrics").text

    exporter.health(lambda: "the database has not answered for 40 s")
    reply = httpx.get(f"{base}/healthz")
    assert reply.status_code == 503
    assert reply.json()["problem"] == "the database has not answered for 40 s"

    def broken() -> str | None:
        raise RuntimeError("no such state")

    exporter.health(broken)
    reply = httpx.get(f"{base}/healthz")
    assert reply.status_code == 503 and "no such state" in reply.json()["problem"]


def test_encoders_health_exits_0_when_healthy_and_1_with_the_reason_when_not(exporter):
    healthy = ask(exporter.port)
    assert healthy.returncode == 0 and "recorder: healthy" in healthy.stdout

    exporter.health(lambda: "behind by 900 records")
    sick = ask(exporter.port)
    assert sick.returncode == 1 and "unhealthy: HTTP 503: behind by 900 records" in sick.stderr

    exporter.stop()
    gone = ask(exporter.port, "--timeout", "1")
    assert gone.returncode == 1 and "no answer from http://127.0.0.1:" in gone.stderr


def test_the_health_url_follows_the_settings_the_service_reads():
    assert health_url("metrics", Exported()) == "http://127.0.0.1:9556/healthz"
    assert health_url("viewer", Exported(prometheus_port="9559", prometheus_host="0.0.0.0")) == (
        "http://127.0.0.1:9559/healthz"
    )
    assert health_url("encoder", Exported(prometheus_host="::")) == "http://[::1]:9580/healthz"
    assert health_url("pisim", Exported(), stream_host="0.0.0.0", stream_port=8000) == "http://127.0.0.1:8000/health"
    assert local_address("fe80::1") == "[fe80::1]" and local_address("metrics") == "metrics"
    with pytest.raises(NoHealthPort, match="ENCODERS_PROMETHEUS_PORT=none"):
        health_url("ingest", Exported(prometheus_port="none"))
