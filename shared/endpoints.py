"""The pipeline's well-known ports, and how a default address is written (docs/PROTOCOL.md).

Every service connects to one address, the core's (the metrics service); the core binds
its session socket and the two publishers viewers subscribe to. By default everything is
on this machine: the core binds loopback, and binds beyond it only with keys or
ENCODERS_INSECURE (shared/keys.py); compose binds every interface, with keys.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

FRAMES_PORT = 5555  # core XPUB: previews of the watched streams (viewers; the recorder asks on its session)
CORE_PORT = 5556  # core ROUTER: the sessions of ingests, workers, the recorder, viewers, `encoders stop`
METRICS_PORT = 5558  # core PUB: records, starts, ends and stats (viewers)


def bind_loopback(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def this_machine(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def as_seen_from(bound: str, core: str) -> str:
    """An endpoint the core bound, as a peer that reached the core at ``core`` connects to it.

    ``bound`` may list several (``ipc://...,tcp://*:5555``): the one of the transport the peer
    used to reach the core is taken (a peer that came over TCP may be on another machine,
    where an ipc:// path means nothing). A wildcard host (``*``, ``0.0.0.0``, ``[::]``) becomes
    the core's host.
    """
    choices = [e.strip() for e in bound.split(",") if e.strip()]
    if not choices:
        return ""
    scheme = core.split("://", 1)[0] if "://" in core else "tcp"
    chosen = next((e for e in choices if e.startswith(scheme + "://")), choices[0])
    if not chosen.startswith("tcp://"):
        return chosen  # ipc:// and inproc:// are the same from everywhere they can be used
    host, _, port = chosen[len("tcp://") :].rpartition(":")
    if host in ("*", "0.0.0.0", "[::]", "::", ""):
        core_host = urlsplit(core).hostname if core.startswith("tcp://") else None
        if core_host:
            host = f"[{core_host}]" if ":" in core_host else core_host
        else:
            host = "127.0.0.1"
    return f"tcp://{host}:{port}"


def is_loopback_host(host: str) -> bool:
    """Whether a host is this machine only: localhost or a loopback address. Anything else ('*',
    0.0.0.0, an interface, a host name that may resolve to anything) reaches beyond it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
