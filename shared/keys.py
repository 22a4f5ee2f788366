"""CurveZMQ keys: every link to the core encrypted, and only peers whose key is allowed served.

`encoders keys init DIR` makes a key pair per role with ``zmq.auth.create_certificates``:

    DIR/core.key            the core's public key: every other service needs it
    DIR/core.key_secret     the core's secret key: the core's machine only
    DIR/<role>.key_secret   one per role (ingest, worker, recorder, viewer, control): that
                            role's machines only
    DIR/allowed/<role>.key  the public keys the core serves (its allow-list)

``ENCODERS_KEYS=DIR`` turns it on: the core's sockets are CURVE servers that ask ZAP
(``zmq.auth.thread.ThreadAuthenticator``) whether a client's key is in ``allowed/``; every
client is a CURVE client of the core's public key with its role's pair. A peer without a
key, or with one the allow-list does not hold, is refused in the handshake: it receives no
frame, takes no work and can send nothing the core would read. Revoking a role is deleting
its file from ``allowed/`` (read when the core starts).

Why whole roles rather than one key per process: the keys travel with a role's
configuration (a compose volume, a folder copied to a camera host), and a role's processes
come and go; a finer allow-list is a file per machine in ``allowed/``, made the same way.

Without keys the core binds loopback only (the default), unless ``ENCODERS_INSECURE=1``
says that the network is trusted, which it says again at every start.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .endpoints import is_loopback_host
from .runtime import StartupError
from .settings import split_addrs

log = logging.getLogger(__name__)

CORE = "core"
CLIENT_ROLES = ("ingest", "worker", "recorder", "viewer", "control")
ALLOWED = "allowed"


@dataclass(frozen=True)
class CurveKeys:
    """One side's key pair, and (a client's) the core's public key."""

    public: bytes
    secret: bytes
    server: bytes | None = None

    def apply(self, sock: zmq.Socket) -> None:
        """Before the socket binds or connects: a CURVE server without ``server``, else a client of it."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        if self.server is None:
            sock.curve_server = True
        else:
            sock.curve_serverkey = self.server


def init(folder: str | os.PathLike) -> list[Path]:
    """Make every role's key pair and the allow-list in ``folder`` (new, or empty); the files made.

    An existing key is never replaced: a folder with keys already is a StartupError (delete it
    to start again, which makes every machine need the new keys).
    """
    root = Path(folder)
    if root.exists() and any(root.glob("*.key")):
        raise StartupError(f"{root} holds keys already: keep them, or remove the folder to make new ones")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    allowed = root / ALLOWED
    allowed.mkdir(exist_ok=True)
    made = []
    for role in (CORE, *CLIENT_ROLES):
        public, secret = (Path(p) for p in zmq.auth.create_certificates(root, role))
        secret.chmod(0o600)
        made += [public, secret]
        if role != CORE:
            (allowed / public.name).write_bytes(public.read_bytes())
            made.append(allowed / public.name)
    return made


def _pair(folder: Path, role: str) -> tuple[bytes, bytes]:
    path = folder / f"{role}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise StartupError(
            f"ENCODERS_KEYS={folder}: no key pair for {role} ({path}: {exc}); `encoders keys init`"
        ) from None
    if secret is None:
        raise StartupError(f"ENCODERS_KEYS={folder}: {path} holds no secret key")
    return public, secret


def client(folder: str, role: str) -> CurveKeys | None:
    """A client's keys from ``folder`` (ENCODERS_KEYS), or None when it is empty. StartupError if missing."""
    if not folder:
        return None
    root = Path(folder)
    try:
        server, _ = zmq.auth.load_certificate(root / f"{CORE}.key")
    except (OSError, ValueError) as exc:
        raise StartupError(f"ENCODERS_KEYS={folder}: no public key of the core ({exc})") from None
    public, secret = _pair(root, role)
    return CurveKeys(public, secret, server)


class CoreKeys:
    """The core's side: its pair, and the ZAP handler that checks each client's key against ``allowed/``."""

    def __init__(self, ctx: zmq.Context, folder: str) -> None:
        root = Path(folder)
        allowed = root / ALLOWED
        public, secret = _pair(root, CORE)
        if not allowed.is_dir() or not any(allowed.glob("*.key")):
            raise StartupError(f"ENCODERS_KEYS={folder}: no allowed keys in {allowed}: no client could join")
        self.keys = CurveKeys(public, secret)
        self.allowed = sorted(p.stem for p in allowed.glob("*.key"))
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("encoders.zap"))
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(allowed))

    def stop(self) -> None:
        self.auth.stop()


def is_loopback(endpoint: str) -> bool:
    """Whether an endpoint is reachable from this machine only (ipc, inproc, a loopback address)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    return is_loopback_host(urlsplit(f"//{rest}").hostname or "")


def on_network(endpoint: str) -> bool:
    """Whether an endpoint is a network transport with a port (or ``*``). Any other (ipc, a
    scheme or address that does not parse) is not checked here: the bind refuses it, saying why."""
    scheme, _, rest = endpoint.partition("://")
    port = rest.rpartition(":")[2]
    return scheme in ("tcp", "ws", "wss", "udp", "pgm", "epgm") and (port == "*" or port.isdigit())


def check_binds(endpoints: list[str], keys: str, insecure: bool) -> None:
    """StartupError for a bind beyond loopback without keys, unless ``insecure``; a warning if so."""
    exposed = [ep for setting in endpoints for ep in split_addrs(setting) if on_network(ep) and not is_loopback(ep)]
    if not exposed or keys:
        return
    if not insecure:
        raise StartupError(
            f"{', '.join(exposed)} can be reached from other machines, and no keys are set: anyone there could "
            "read the cameras' frames and pose as a worker or the recorder. Set ENCODERS_KEYS (encoders keys "
            "init DIR), or ENCODERS_INSECURE=1 on a network you trust"
        )
    log.warning(
        "INSECURE: %s can be reached from other machines without keys (ENCODERS_INSECURE): anyone there can "
        "read the frames and pose as any service",
        ", ".join(exposed),
    )
