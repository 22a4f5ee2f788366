"""Each service's Prometheus metrics on ``/metrics`` (prometheus_client, its text format).

A service keeps its counts as it always has (the same ones its Stats and summaries carry);
at each scrape its ``collect`` function turns them into metric families, so nothing is
counted twice and a scrape never waits for the service's loop. Durations and sizes that need
a distribution (latency, batch sizes, encode and database times) are prometheus_client
Histograms the service observes as it goes.

Ports: ``ENCODERS_PROMETHEUS_PORT`` is ``auto`` (each service its own, below, so that one
machine runs them all), a number (0: any free port), or ``none``. The all-in-one command
numbers its ingests and workers from their service's port. The HTTP server listens on
``ENCODERS_PROMETHEUS_HOST`` (127.0.0.1; compose: every interface, for Prometheus elsewhere).
A port in use turns the metrics off with a warning: a camera is not stopped for its metrics.

Every name starts with ``encoders_``; README.md lists them, and docs/grafana-dashboard.json
uses exactly these.

The same server answers ``/healthz`` (``encoders health SERVICE`` asks it; compose's health
checks use that): 200 once the service has started (the exporter starts after a service's
set-up: the core's sockets bound, the model loaded, the database reached), 503 with the
problem when the service's own check names one, or when its main loop has stopped turning.

That last one because the server runs on a thread of its own: a service whose loop is wedged
(a deadlock, a call that never returns) would otherwise go on answering 200. Each service's
loop says it turned (``beat``) and, once its loop is over and it is finishing (a recorder's
last writes), that it ended (``loop_ended``): only a loop that should turn is watched.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from .health import WEDGED
from .settings import Exported

log = logging.getLogger(__name__)


class Families:
    """Metric families built at a scrape: ``counter``/``gauge`` add one sample each."""

    def __init__(self) -> None:
        self._families: dict[str, Any] = {}  # name -> CounterMetricFamily or GaugeMetricFamily

    def counter(self, name: str, doc: str, value: float | None, **labels: str) -> None:
        self._add(CounterMetricFamily, name, doc, value, labels)

    def gauge(self, name: str, doc: str, value: float | None, **labels: str) -> None:
        self._add(GaugeMetricFamily, name, doc, value, labels)

    def _add(self, kind: type, name: str, doc: str, value: float | None, labels: Mapping[str, str]) -> None:
        if value is None:
            return
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = kind(name, doc, labels=list(labels))
        family.add_metric(list(labels.values()), float(value))

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class _Collect(Collector):
    def __init__(self, build: Callable[[Families], None]) -> None:
        self.build = build

    def collect(self) -> Iterable[Metric]:
        # The service's loop changes its counts while a scrape reads them: a dict that grew
        # under the scrape (a new stream) is read again, not reported half-way.
        for _ in range(5):
            families = Families()
            try:
                self.build(families)
            except RuntimeError:  # dictionary changed size during iteration
                continue
            return list(families)
        return []


# A main loop that has not turned for this long is wedged. Loops turn every 0.1 s or so; the
# longest they may block by design is a recorder's write, cancelled by its statement timeout
# (ENCODERS_DB_STATEMENT_TIMEOUT, 30 s) and cut 10 s after: 60 s is past either.
LOOP_WEDGED_S = 60.0


class Exporter:
    """One service's registry: what it collects at a scrape, its histograms, its HTTP server."""

    def __init__(self, service: str, *, wedged_after: float = LOOP_WEDGED_S) -> None:
        self.service = service
        self.wedged_after = wedged_after
        self.registry = CollectorRegistry()
        self.port: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._check: Callable[[], str | None] = lambda: None
        self._turned: float | None = None  # when the main loop last turned (None: not watched)

    def beat(self) -> None:
        """The service's main loop turned (once per turn: an assignment, nothing more)."""
        self._turned = time.monotonic()

    def loop_ended(self) -> None:
        """The main loop is over (the service is finishing): it is no longer expected to turn."""
        self._turned = None

    def health(self, check: Callable[[], str | None]) -> None:
        """``check()`` runs at each /healthz: None when healthy, else the problem, in words."""
        self._check = check

    def healthz(self) -> tuple[int, dict[str, str]]:
        """The HTTP status and body of /healthz."""
        turned = self._turned
        if turned is not None and (idle := time.monotonic() - turned) > self.wedged_after:
            wedged = f"{WEDGED} its main loop has not turned for {idle:.0f} s"
            return 503, {"service": self.service, "status": "unhealthy", "problem": wedged}
        try:
            problem = self._check()
        except Exception as exc:  # a check that fails is a problem to report, not a crash of the server
            problem = f"health check failed: {exc}"
        if problem:
            return 503, {"service": self.service, "status": "unhealthy", "problem": problem}
        return 200, {"service": self.service, "status": "ok"}

    def collect(self, build: Callable[[Families], None]) -> None:
        """``build(families)`` runs at every scrape and adds the service's counts."""
        self.registry.register(_Collect(build))

    def histogram(self, name: str, doc: str, labels: Iterable[str] = (), buckets: Iterable[float] = ()) -> Histogram:
        kw: dict[str, Any] = {"buckets": tuple(buckets)} if buckets else {}
        return Histogram(name, doc, list(labels), registry=self.registry, **kw)

    def start(self, cfg: Exported, index: int = 0) -> int | None:
        """Listen; the port (None: off, or the port was in use, which is said)."""
        port = cfg.prometheus_port_for(self.service, index)
        if port is None:
            return None
        try:
            self._server = _listen(cfg.prometheus_host, port, self._app())
        except OSError as exc:
            log.warning(
                "Prometheus metrics off: cannot listen on %s:%d (%s); choose another with ENCODERS_PROMETHEUS_PORT",
                cfg.prometheus_host,
                port,
                exc.strerror or exc,
            )
            return None
        self._thread = threading.Thread(target=self._server.serve_forever, name="exporter", daemon=True)
        self._thread.start()
        self.port = self._server.server_port
        log.info("Prometheus metrics on http://%s:%d/metrics (health: /healthz)", cfg.prometheus_host, self.port)
        return self.port

    def _app(self) -> Callable:
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                status, body = self.healthz()
                reason = "OK" if status == 200 else "Service Unavailable"
                start_response(f"{status} {reason}", [("Content-Type", "application/json")])
                return [json.dumps(body).encode()]
            return metrics(environ, start_response)

        return app

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and health checks every few seconds are not news for the service's log."""


def _listen(host: str, port: int, app: Callable) -> ThreadingWSGIServer:
    """A threaded HTTP server for ``app`` on ``host`` (IPv4 or IPv6, as the host is written).

    What prometheus_client's start_http_server does, by hand because it serves only its own
    registry's app: /healthz needs a route beside /metrics on the same port."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    return make_server(host, port, app, Server, handler_class=_Quiet)


# Latency buckets from a fast GPU's tens of milliseconds to a saturated CPU's seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
