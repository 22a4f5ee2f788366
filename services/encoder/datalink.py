"""A worker's data socket: the pictures the core assigned it, straight from the ingests
(docs/PROTOCOL.md, "Protocol 3": the data link).

The worker binds a ROUTER (``ENCODERS_DATA_BIND``; by default loopback on any free port without
keys, ``tcp://*:5560`` with them) and names it in its Hello (``Hello.data``, or
``ENCODERS_DATA_ADVERTISE`` as given); the core hands that address and the worker's public key
to the ingests (``Workers``), and each ingest connects one DEALER and sends ``Pictures``.

With keys the socket is a CurveZMQ server with the worker's key pair, and a ZAP handler lets
through only the ingest keys the core named in its last ``Workers`` (``admit``): a stranger, or
a key of another role, fails the handshake and is never read. Each refused handshake is counted
(``refused_keys``) and logged (once, then counted): those ZAP refuses (a key the core did not
name), and, seen by a monitor of the socket, those that fail before ZAP is asked (a stranger
without keys, a plain ZMTP peer, fails the mechanism check; one told another server key sends a
handshake that does not decrypt). A connection that closes before its handshake is done (a
port scan, a peer gone mid-handshake) is no key refused and not counted. Without keys nothing
is checked, and the socket binds loopback only unless ENCODERS_INSECURE says otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from encoders.shared import messages, zmqio
from encoders.shared.complaints import Complaints
from encoders.shared.keys import CurveKeys, is_loopback
from encoders.shared.messages import DecodeError, Frame, Pictures
from encoders.shared.runtime import StartupError

log = logging.getLogger("encoders.encoder")
complain = Complaints(log, "the worker's counters")

DATA_PORT = 5560  # with keys, the data socket's default port on every interface
PORTS_TRIED = 16  # with keys and no ENCODERS_DATA_BIND, the ports from DATA_PORT on that a worker tries
ZAP_DOMAIN = "data"
RECEIVE_MAX = 256  # messages taken from the data socket per call


def default_bind(keys: str, n: int = 0) -> str:
    """Without keys: loopback, any free port; with keys: every interface, DATA_PORT (plus ``n``)."""
    return f"tcp://*:{DATA_PORT + n}" if keys else "tcp://127.0.0.1:*"


class Admitted:
    """The ingest keys the core says this worker serves (``Workers.admit``), asked by ZAP at each handshake."""

    def __init__(self, counters: dict[str, int]) -> None:
        self._lock = threading.Lock()
        self._keys: dict[bytes, str] = {}
        self.counters = counters
        self.counters.setdefault("refused_keys", 0)

    def set(self, admit: dict[str, str]) -> None:
        with self._lock:
            self._keys = {key.encode("ascii"): name for key, name in admit.items()}

    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            ok = key in self._keys
        if not ok:
            self.counters["refused_keys"] += 1
            complain(
                "refused_keys",
                "refused a connection to the data socket with the key %s: not an ingest key the core named",
                key.decode("ascii", "replace"),
            )
        return ok


# Why a handshake failed before ZAP was asked (a monitor's HANDSHAKE_FAILED_PROTOCOL value), in words.
_PROTOCOL_ERRORS = {
    getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", -1): "no CurveZMQ (a peer without keys)",
    getattr(zmq, "PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC", -2): "a CurveZMQ handshake that does not decrypt "
    "(the peer was told another server key)",
}


class _Zap(ThreadAuthenticator):
    def __init__(self, ctx: zmq.Context, admitted: Admitted) -> None:
        super().__init__(ctx, log=logging.getLogger("encoders.zap"))
        self.admitted = admitted

    def curve_user_id(self, client_public_key: bytes) -> str:
        return z85.encode(client_public_key).decode("ascii")


class DataLink:
    """The worker's data socket, the keys it admits, and the pictures that come in on it."""

    def __init__(
        self,
        ctx: zmq.Context,
        bind: str,
        advertise: str,
        max_frame_bytes: int,
        keys: CurveKeys | None,
        counters: dict[str, int],
    ) -> None:
        self.counters = counters
        for name in ("pictures", "bad_data_messages"):
            self.counters.setdefault(name, 0)
        self.admitted = Admitted(counters)
        self.auth: _Zap | None = None
        curve = None
        if keys is not None:  # before the socket binds: the ZAP handler must be there for the first handshake
            self.auth = _Zap(ctx, self.admitted)
            self.auth.start()
            self.auth.configure_curve_callback(ZAP_DOMAIN, self.admitted)
            curve = CurveKeys(keys.public, keys.secret, None, ZAP_DOMAIN)
        self.public = keys.public.decode("ascii") if keys is not None else ""
        try:
            self.sock = self._bind(ctx, bind, keys is not None, messages.largest_part(max_frame_bytes), curve)
        except Exception:
            self.stop_auth()
            raise
        # With keys: handshakes that fail before ZAP is asked (ZAP's refusals are counted by its callback).
        self.monitor: zmq.Socket | None = (
            self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL) if keys is not None else None
        )
        self.address = advertise or zmqio.bound(self.sock).split(",")[0]
        self.advertised = bool(advertise)
        if keys is None and not is_loopback(self.address) and not self.advertised:
            log.warning("the data socket %s takes pictures from anyone who reaches it (no keys)", self.address)

    @staticmethod
    def _bind(ctx: zmq.Context, bind: str, keyed: bool, largest: int, curve: CurveKeys | None) -> zmq.Socket:
        """The data socket bound to ``bind``; "" (the default): with keys the first free port from
        DATA_PORT on (a second worker on the same machine takes the next: its Hello names its port, so
        nothing else needs telling, and the log says so), without keys any free port on loopback."""
        tried = (
            [bind] if bind else [default_bind("keys" if keyed else "", n) for n in range(PORTS_TRIED if keyed else 1)]
        )
        for n, endpoint in enumerate(tried):
            try:
                sock = zmqio.open_socket(ctx, zmq.ROUTER, endpoint, bind=True, max_message_bytes=largest, curve=curve)
            except StartupError as exc:
                if n + 1 < len(tried) and "in use" in str(exc):
                    continue
                if bind:
                    raise
                raise StartupError(
                    f"{exc}: ports {DATA_PORT}-{DATA_PORT + len(tried) - 1} are all taken (other workers on this "
                    "machine?); set ENCODERS_DATA_BIND"
                ) from None
            if n:
                log.warning("port %d is taken (another worker on this machine?): pictures on %s", DATA_PORT, endpoint)
            return sock
        raise AssertionError("unreachable")

    def admit(self, keys: dict[str, str]) -> None:
        """The core's latest ``Workers.admit``: only these ingest keys pass the handshake from now on."""
        self.admitted.set(keys)

    def watch(self) -> None:
        """The handshakes that failed before ZAP was asked, since the last look: each counted as a key
        refused (``refused_keys``), the first logged."""
        if self.monitor is None:
            return
        for _ in range(RECEIVE_MAX):
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                continue
            value = int(event["value"])
            self.counters["refused_keys"] += 1
            complain(
                "refused_keys",
                "refused a connection to the data socket: %s",
                _PROTOCOL_ERRORS.get(value, f"a handshake that breaks the protocol (ZeroMQ's error {value:#x})"),
            )

    def receive(self) -> Iterator[Frame]:
        """The pictures waiting, as Frames, in the order they came."""
        self.watch()
        for _ in range(RECEIVE_MAX):
            try:
                parts = zmqio.recv_parts(self.sock, zmqio.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = messages.decode(parts[1:])
            except DecodeError as exc:
                self.counters["bad_data_messages"] += 1
                complain("bad_data_messages", "a message on the data socket does not decode: %s", exc)
                continue
            if not isinstance(msg, Pictures):
                self.counters["bad_data_messages"] += 1
                complain("bad_data_messages", "a %s on the data socket: only pictures travel there", msg.KIND)
                continue
            self.counters["pictures"] += msg.n
            yield from msg.frames()

    def stop_auth(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)
            self.monitor = None
        self.sock.close(0)
        self.stop_auth()
