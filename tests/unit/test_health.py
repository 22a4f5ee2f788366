"""Health checks: a service's /healthz beside its /metrics, and `encoders health` asking it.

A real exporter on a real port, asked over HTTP by the real command (compose's health checks
run exactly that in each container).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from encoders.shared.exporter import Exporter
from encoders.shared.health import NoHealthPort, health_url, local_address
from encoders.shared.settings import Exported

from ..conftest import free_port, wait_for


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


def test_a_main_loop_that_stops_turning_is_unhealthy_and_the_all_in_one_counts_it_as_silence():
    """The exporter answers on a thread of its own: only the loop's beat tells a wedged loop from
    a quiet one. Until the loop first turns, and once it has ended (finishing), nothing is watched."""
    from encoders.launcher.children import HEALTH_EVERY_S, Child, Children, Liveness

    exporter = Exporter("encoder", wedged_after=0.5)
    exporter.start(Exported(prometheus_port=str(free_port())))
    url = f"http://127.0.0.1:{exporter.port}/healthz"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert httpx.get(url).status_code == 200  # not watched before the loop's first turn
        exporter.beat()
        assert httpx.get(url).status_code == 200
        wait_for(lambda: httpx.get(url).status_code == 503, 10, "the loop counted wedged")
        reply = httpx.get(url)
        assert reply.json()["problem"].startswith("wedged: its main loop has not turned for"), reply.json()
        assert exporter.port is not None
        out = ask(exporter.port)
        assert out.returncode == 1 and "wedged: its main loop has not turned" in out.stdout + out.stderr

        # The all-in-one's watch: an answer from a wedged loop does not count as one.
        children = Children(environ={}, known=set())
        child = Child("encoder", "encode", Exported(), sleeper, started=0.0, health=url)
        children.all.append(child)
        turning = threading.Event()

        def loop() -> None:  # a loop that turns while ``turning`` is set
            while True:
                if turning.is_set():
                    exporter.beat()
                time.sleep(0.05)  # paces: the loop's turns

        def rounds(n: int) -> None:  # ``n`` rounds of the watch have gone by
            start = time.monotonic()
            wait_for(lambda: time.monotonic() - start > (n + 0.25) * HEALTH_EVERY_S, (n + 2) * HEALTH_EVERY_S, "rounds")

        threading.Thread(target=loop, daemon=True).start()
        with Liveness(children):
            turning.set()
            wait_for(lambda: child.answered is not None, 4 * HEALTH_EVERY_S + 5, "an answer counted")
            turning.clear()  # wedged
            wait_for(lambda: httpx.get(url).status_code == 503, 10, "the loop wedged again")
            rounds(1)  # an ask under way when it wedged may still count
            wedged_at = child.answered
            rounds(2)  # the unit the watch works in: neither round counted as an answer
            assert child.answered == wedged_at
            exporter.loop_ended()  # the loop is over (finishing): healthy, and answers count again
            assert httpx.get(url).status_code == 200
            wait_for(lambda: child.answered != wedged_at, 4 * HEALTH_EVERY_S + 5, "an answer counted again")
    finally:
        sleeper.kill()
        sleeper.wait()
        exporter.stop()
