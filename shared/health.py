"""`encoders health SERVICE`: ask a running service whether it is healthy.

Compose's health checks run it inside each container, so it reads the same ENCODERS_*
variables the service read and finds the same port: a service's ``/healthz`` lives beside its
Prometheus ``/metrics`` (shared/exporter.py), pisim's ``/health`` on its stream port.
Standard library only (urllib): the command is in every image, and most have no HTTP client.
"""

from __future__ import annotations

import ipaddress
import json

from .settings import PORTS, Exported

STREAM_SERVICES = ("pisim",)  # answer on their own HTTP port (pisim's /health), not the exporter's
SERVICES = tuple(PORTS) + STREAM_SERVICES
# How /healthz's problem starts when a service's main loop stopped turning (shared/exporter.py):
# the all-in-one's watch counts that answer as silence, and restarts the service.
WEDGED = "wedged:"


class NoHealthPort(Exception):
    """The service serves no health endpoint with these settings."""


def local_address(host: str) -> str:
    """Where to reach a server listening on ``host`` from its own machine (every interface: loopback)."""
    if host in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host  # a name


def health_url(service: str, exported: Exported, *, stream_host: str = "", stream_port: int = 0) -> str:
    """The URL of ``service``'s health endpoint, from the settings that service reads."""
    if service in STREAM_SERVICES:
        return f"http://{local_address(stream_host)}:{stream_port}/health"
    port = exported.prometheus_port_for(service)
    if not port:  # none, or 0 (any free port: not knowable from outside)
        raise NoHealthPort(
            f"{service} serves /healthz beside its Prometheus metrics, which are off here "
            f"(ENCODERS_PROMETHEUS_PORT={exported.prometheus_port}); give its port with --prometheus-port"
        )
    return f"http://{local_address(exported.prometheus_host)}:{port}/healthz"


def ask(url: str, timeout: float) -> tuple[bool, str]:
    """(healthy, what it said): healthy is an HTTP 200 within ``timeout`` seconds."""
    import urllib.error  # here: the command line imports this module for every command
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, _said(response.read())
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {_said(exc.read())}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"no answer from {url}: {reason}"


def _said(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:200]
    if isinstance(data, dict) and "problem" in data:
        return str(data["problem"])
    return json.dumps(data, sort_keys=True)
