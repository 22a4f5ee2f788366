"""CurveZMQ keys: every link to the core encrypted, and each key served as the roles it was given.
(One concept, the key folder, from making it to serving it: longer than 350 lines for that.)

`encoders keys init DIR` makes a key pair per role with ``zmq.auth.create_certificates``:

    DIR/core.key            the core's public key: every other service needs it
    DIR/core.key_secret     the core's secret key: the core's machine only
    DIR/<role>.key_secret   one per role (ingest, worker, recorder, viewer, control): that
                            role's machines only
    DIR/allowed/<role>.key  the public keys the core serves (its allow-list)

A key is bound to a role by its file's name in ``allowed/``: ``<role>.key``, or
``<role>-<machine>.key`` for one machine's own key (``encoders keys add DIR --role worker
--name gpu1`` makes ``allowed/worker-gpu1.key`` and, in ``DIR/worker-gpu1/``, all that machine
needs). A file whose name begins with no role is ignored, with a warning naming it. The same
public key in two files holds both files' roles.

``ENCODERS_KEYS=DIR`` turns it on: the core's sockets are CURVE servers that ask ZAP
(``CoreKeys``: pyzmq's ``ThreadAuthenticator``, with a callback per door) whether a client's
key may pass that door: the session socket (ZAP domain ``core``) any role's key, the frames and
metrics publishers (``frames``, ``metrics``) only a viewer's or the recorder's. A peer without
a key, or with one the allow-list does not hold, is refused in the handshake: it receives no
frame, takes no work and can send nothing the core would read. ZAP names the key that passed
in each message's User-Id (``user_id``: the file's name, then the public key), and the core
welcomes a Hello only in a role that key holds (services/metrics/service.py): a viewer's key
cannot say Hello as a worker or the recorder, a camera host's cannot stop the pipeline.

``allowed/`` is read again whenever it changes (``AllowList.refresh``: at each handshake, and
by the core once a second), so ``encoders keys add`` and ``encoders keys revoke`` take effect
without a restart; the core ends the sessions of a key it no longer holds within a second or
two, and drops its publishers' subscribers if a subscriber's key went (they connect again, and
ZAP asks again).

Without keys the core binds loopback only (the default), unless ``ENCODERS_INSECURE=1``
says that the network is trusted, which it says again at every start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from .complaints import Complaints
from .endpoints import is_loopback_host
from .runtime import StartupError
from .settings import split_addrs

log = logging.getLogger(__name__)

CORE = "core"
CLIENT_ROLES = ("ingest", "worker", "recorder", "viewer", "control")
SUBSCRIBERS = ("viewer", "recorder")  # the roles whose keys the publishers serve
ALLOWED = "allowed"
# The core's doors (each socket's ZAP domain) and the roles whose keys each lets through.
DOORS: dict[str, tuple[str, ...]] = {"core": CLIENT_ROLES, "frames": SUBSCRIBERS, "metrics": SUBSCRIBERS}
MACHINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]*(-[A-Za-z0-9._]+)*")  # a machine's name in `keys add`
Z85_KEY_CHARS = 40  # a public key, z85-encoded


@dataclass(frozen=True)
class CurveKeys:
    """One side's key pair, and (a client's) the core's public key; (a server's) its socket's ZAP domain."""

    public: bytes
    secret: bytes
    server: bytes | None = None
    zap_domain: str = ""

    def apply(self, sock: zmq.Socket) -> None:
        """Before the socket binds or connects: a CURVE server without ``server``, else a client of it."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        if self.server is None:
            sock.curve_server = True
            if self.zap_domain:  # read when the socket binds: set before
                sock.zap_domain = self.zap_domain.encode()
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


def role_of(name: str) -> str | None:
    """The role a key in ``allowed/`` is bound to, from its file's name without ``.key``:
    ``<role>`` or ``<role>-<machine>``; None for any other name (the core ignores that file)."""
    role, dash, machine = name.partition("-")
    if role in CLIENT_ROLES and (not dash or machine):
        return role
    return None


def add_machine(folder: str | os.PathLike, role: str, machine: str, out: str | os.PathLike | None = None) -> Path:
    """A key pair for one machine of ``role``: ``allowed/<role>-<machine>.key`` in ``folder`` and, in
    ``out`` (default ``folder/<role>-<machine>``), what that machine needs (``core.key``, its pair).
    The folder made; StartupError if the name is taken, the role unknown or ``folder`` has no core key."""
    root = Path(folder)
    if role not in CLIENT_ROLES:
        raise StartupError(f"no role {role!r}: one of {', '.join(CLIENT_ROLES)}")
    if not MACHINE.fullmatch(machine):
        raise StartupError(f"{machine!r} cannot name a machine: letters, digits, '.', '_' and single '-' between them")
    name = f"{role}-{machine}"
    allowed = root / ALLOWED / f"{name}.key"
    core = root / f"{CORE}.key"
    if not core.is_file():
        raise StartupError(f"{root} holds no {CORE}.key: is it the folder `encoders keys init` made?")
    if allowed.exists():
        raise StartupError(f"{allowed} exists already: `encoders keys revoke {root} {name}` first to replace it")
    target = Path(out) if out is not None else root / name
    if (target / f"{role}.key_secret").exists():
        raise StartupError(f"{target} holds a {role} key already: give another --out")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = (Path(p) for p in zmq.auth.create_certificates(target, role))
    secret.chmod(0o600)
    shutil.copyfile(core, target / core.name)
    allowed.parent.mkdir(exist_ok=True)
    # Allowed last, and whole at once (a rename): a core reading allowed/ never sees half a key.
    partial = allowed.with_name(f".{allowed.name}.partial")
    partial.write_bytes(public.read_bytes())
    partial.replace(allowed)
    return target


def revoke(folder: str | os.PathLike, name: str) -> Path:
    """Remove ``allowed/<name>.key`` (``name`` with or without ``.key``); the file removed. StartupError if none."""
    name = name.removesuffix(".key")
    path = Path(folder) / ALLOWED / f"{name}.key"
    if "/" in name or name in ("", ".", "..") or not path.is_file():
        held = ", ".join(sorted(p.stem for p in (Path(folder) / ALLOWED).glob("*.key"))) or "none"
        raise StartupError(f"no key {name!r} in {path.parent} (it holds: {held})")
    path.unlink()
    return path


def listing(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, its role or why it is ignored) for every file in ``folder/allowed/``, by name."""
    rows = []
    for path in sorted((Path(folder) / ALLOWED).glob("*.key"), key=lambda p: p.stem):
        role = role_of(path.stem)
        if role is None:
            rows.append((path.stem, f"ignored: {IGNORED}"))
            continue
        try:
            zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            rows.append((path.stem, f"ignored: not a public key ({exc})"))
        else:
            rows.append((path.stem, role))
    return rows


IGNORED = f"its name is neither <role>.key nor <role>-<machine>.key, the roles being {', '.join(CLIENT_ROLES)}"


@dataclass(frozen=True)
class Allowed:
    """A public key the core serves: the files of ``allowed/`` that hold it, and their roles."""

    key: bytes  # z85, as ZAP and load_certificate give it
    names: tuple[str, ...]
    roles: frozenset[str]

    @property
    def name(self) -> str:
        return "+".join(self.names)


class AllowList:
    """The keys in ``allowed/`` and their roles, read again whenever the folder changes.

    Shared by the ZAP thread (each handshake) and the core's loop (once a second): ``refresh``
    looks at the names, sizes and times of the files (a listing: 0.1 ms for 25 keys) and reads
    the keys only if they changed; ``generation`` counts the reads.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.generation = 0
        self._lock = threading.Lock()
        self._by_key: dict[bytes, Allowed] = {}
        self._looked: tuple | None = None
        self._said: set[str] = set()  # the files warned about (each once)
        # Keys that lost a role (or went) at any refresh since ``take_changed``, as they were: the ZAP
        # thread refreshes at each handshake, so a key added and revoked between two of the core's looks
        # is seen here, where comparing two of its looks would miss it (and keep its subscribers).
        self._changed: dict[bytes, Allowed] = {}
        self.refresh()

    def refresh(self) -> bool:
        """Read ``allowed/`` again if it changed; whether it did."""
        looked = self._look()
        with self._lock:
            if looked == self._looked and self.generation:
                return False
            before = self._by_key
            self._by_key = self._read()
            self._looked = looked
            self.generation += 1
            for k, old in before.items():
                now = self._by_key.get(k)
                if now is None or old.roles - now.roles:
                    seen = self._changed.get(k)
                    self._changed[k] = old if seen is None else Allowed(k, old.names, old.roles | seen.roles)
            if self.generation > 1:
                gone = sorted(e.name for k, e in before.items() if k not in self._by_key)
                log.info(
                    "%s changed: serving the keys of %s%s",
                    self.folder,
                    ", ".join(self.names()) or "nobody",
                    f"; no longer {', '.join(gone)}" if gone else "",
                )
        return True

    def take_changed(self) -> dict[bytes, Allowed]:
        """The keys that lost a role or went since the last call, each with the roles it had."""
        with self._lock:
            changed, self._changed = self._changed, {}
        return changed

    def find(self, key: bytes) -> Allowed | None:
        """The allowed key ``key`` (z85), or None."""
        return self._by_key.get(key)

    def admits(self, key: bytes, door: str) -> Allowed | None:
        """The allowed key ``key`` if one of its roles may pass ``door`` (DOORS), else None."""
        entry = self._by_key.get(key)
        return entry if entry is not None and entry.roles & set(DOORS.get(door, ())) else None

    def names(self) -> list[str]:
        return sorted(n for e in self._by_key.values() for n in e.names)

    def keys(self) -> dict[bytes, Allowed]:
        return dict(self._by_key)

    def user_id(self, key: bytes) -> str:
        """The User-Id ZAP gives a connection of ``key`` (z85): the key's file name(s), then the key."""
        entry = self._by_key.get(key)
        return f"{entry.name if entry else '?'} {key.decode('ascii')}"

    def _look(self) -> tuple:
        seen = []
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".key"):
                        try:
                            st = entry.stat()
                        except OSError:  # gone meanwhile
                            continue
                        seen.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError as exc:
            return (str(exc),)
        return tuple(sorted(seen))

    def _read(self) -> dict[bytes, Allowed]:
        names: dict[bytes, list[str]] = {}
        roles: dict[bytes, set[str]] = {}
        if not self.folder.is_dir():
            self._warn(f"{self.folder} is not a folder: no key is allowed")
        for path in sorted(self.folder.glob("*.key")):
            role = role_of(path.stem)
            if role is None:
                self._warn(f"ignored {path}: {IGNORED}")
                continue
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                self._warn(f"ignored {path}: not a public key ({exc})")
                continue
            names.setdefault(public, []).append(path.stem)
            roles.setdefault(public, set()).add(role)
        return {key: Allowed(key, tuple(names[key]), frozenset(roles[key])) for key in names}

    def _warn(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            log.warning("%s", line)


def key_of(user_id: str) -> bytes:
    """The public key (z85) in a User-Id that ``AllowList.user_id`` made."""
    return user_id[-Z85_KEY_CHARS:].encode("ascii")


def name_of(user_id: str) -> str:
    """The key's file name(s) in a User-Id that ``AllowList.user_id`` made."""
    return user_id[: -Z85_KEY_CHARS - 1] or "?"


class _Zap(ThreadAuthenticator):
    """pyzmq's ZAP thread, whose User-Id names the key that passed (``AllowList.user_id``)."""

    def __init__(self, ctx: zmq.Context, allowed: AllowList) -> None:
        super().__init__(ctx, log=logging.getLogger("encoders.zap"))
        self.allowed = allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.allowed.user_id(z85.encode(client_public_key))


class _Door:
    """ZAP's answer for one door (a socket's domain, DOORS): whether a key may pass it."""

    def __init__(self, allowed: AllowList, complain: Complaints) -> None:
        self.allowed, self.complain = allowed, complain

    def callback(self, domain: str, key: bytes) -> bool:
        self.allowed.refresh()  # a key just added or revoked counts at once
        if self.allowed.admits(key, domain) is not None:
            return True
        entry = self.allowed.find(key)
        if entry is not None:  # a known key at the wrong door: a mistake worth saying (once)
            self.complain(
                f"{entry.name}@{domain}",
                "refused key %s (%s) at the %s socket: only %s keys may connect there",
                entry.name,
                ", ".join(sorted(entry.roles)),
                domain,
                " or ".join(DOORS.get(domain, ())) or "no",
            )
        return False


class CoreKeys:
    """The core's side: its pair, its allow-list (``allowed``), and the ZAP thread that asks it
    about each client's key at each door."""

    def __init__(self, ctx: zmq.Context, folder: str) -> None:
        root = Path(folder)
        public, secret = _pair(root, CORE)
        self.allowed = AllowList(root / ALLOWED)
        if not self.allowed.keys():
            raise StartupError(
                f"ENCODERS_KEYS={folder}: no allowed keys in {root / ALLOWED}: no client could join "
                "(`encoders keys list` says why a file there is ignored)"
            )
        self.keys = CurveKeys(public, secret)
        self.auth = _Zap(ctx, self.allowed)
        self.auth.start()
        complain = Complaints(log, "a reminder a minute")
        for domain in DOORS:
            self.auth.configure_curve_callback(domain, _Door(self.allowed, complain))

    def door(self, domain: str) -> CurveKeys:
        """The core's keys for its socket ``domain`` (one of DOORS): the keys ZAP lets through it are that door's."""
        return dataclasses.replace(self.keys, zap_domain=domain)

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
