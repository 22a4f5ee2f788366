"""Who reaches whom on the data links (docs/PROTOCOL.md, "Protocol 3"): the core's side.

Pure logic. Each worker life gets a number (1..65535; ``Assigned`` names workers by it, 0 being
"dropped"), its data address (its Hello's data socket, on the host the core sees its connection
come from unless the worker advertised an address of its own) and its public key (the key ZAP
let it in with; "" without keys). Each ingest session's public key is kept too: a worker admits
only those on its data socket. ``admit()`` is the ``Workers`` every worker gets, ``links(ingest)``
the one each ingest gets; each is sent again whenever it changed (``admit_changed``,
``links_changed``, cleared by whoever sent them).

Keys on the data link (docs/PROTOCOL.md): the admit list has a ``generation``, counted up at each
change; a worker answers ``Admits(generation)`` once its data socket admits that list. An ingest
with a key is *linked* to a worker once that worker admitted a generation at or past the one that
brought the ingest's key (``since``): only then is the ingest told the worker's link
(``links(ingest)``) and only then may the broker give the worker that ingest's captures
(``may``). So an ingest's handshake never reaches a worker before its key does. Without keys
every pair is linked at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from encoders.shared.messages import Workers

NUMBER_MAX = 65535
WILDCARDS = ("*", "0.0.0.0", "::", "[::]", "")


def data_address(data: str, advertised: bool, peer_address: str) -> str:
    """Where an ingest reaches a worker's data socket: as advertised; else its port on the host its
    session came from (ZeroMQ's Peer-Address), which a wildcard bind (tcp://*:5560) needs, and which
    is right for any TCP bind the core could see the worker's connection from; ipc:// as bound."""
    if advertised or not data.startswith("tcp://"):
        return data
    rest = data[len("tcp://") :]
    host, _, port = rest.rpartition(":")
    if not peer_address:
        return data if host not in WILDCARDS else f"tcp://127.0.0.1:{port}"
    if host not in WILDCARDS and not is_loopback_host(host):
        return data  # bound to one interface: the worker said which
    if ":" in peer_address and not peer_address.startswith("["):
        peer_address = f"[{peer_address}]"  # IPv6
    return f"tcp://{peer_address}:{port}"


def is_loopback_host(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or host
    return name in ("localhost", "::1") or name.startswith("127.")


@dataclass
class WorkerLinkEntry:
    identity: bytes
    number: int
    address: str
    key: str
    admitted: int = 0  # the generation of the admit list its data socket admits (its last Admits)


@dataclass
class IngestLinkEntry:
    key: str  # its public key ("" without keys)
    name: str
    stream: str
    since: int  # the admit list's generation that first held its key (0 without a key)


class DataLinks:
    def __init__(self) -> None:
        self.workers: dict[bytes, WorkerLinkEntry] = {}
        self.by_number: dict[int, bytes] = {}
        self.ingests: dict[bytes, IngestLinkEntry] = {}  # identity -> its key, name, stream
        self.by_stream: dict[str, bytes] = {}  # stream -> its ingest's identity (the latest)
        self.generation = 0  # of the admit list: counted up at each change
        self._next = 1
        self.links_changed = False
        self.admit_changed = False
        self._all_linked: bool | None = None  # every pair linked (None: to be worked out again)

    def add_worker(self, identity: bytes, address: str, key: str) -> int:
        """A worker's new life: its number (never one in use; numbers go round past NUMBER_MAX)."""
        self.remove_worker(identity)
        while self._next in self.by_number:
            self._next = self._next % NUMBER_MAX + 1
        number = self._next
        self._next = self._next % NUMBER_MAX + 1
        self.workers[identity] = WorkerLinkEntry(identity, number, address, key)
        self._all_linked = None
        self.by_number[number] = identity
        self.links_changed = True
        return number

    def remove_worker(self, identity: bytes) -> None:
        entry = self.workers.pop(identity, None)
        if entry is not None:
            del self.by_number[entry.number]
            self.links_changed = True

    def number(self, identity: bytes) -> int:
        entry = self.workers.get(identity)
        return entry.number if entry is not None else 0

    def add_ingest(self, identity: bytes, key: str, name: str, stream: str = "") -> None:
        """An ingest session; with a key, the admit list changes (a new generation)."""
        self.remove_ingest(identity)
        since = 0
        if key:
            self.generation += 1
            since = self.generation
            self.admit_changed = True
        self.ingests[identity] = IngestLinkEntry(key, name, stream, since)
        self._all_linked = None
        self.by_stream[stream] = identity
        self.links_changed = True  # its links are to be told (without keys: every worker's at once)

    def remove_ingest(self, identity: bytes) -> None:
        entry = self.ingests.pop(identity, None)
        if entry is None:
            return
        if self.by_stream.get(entry.stream) == identity:
            del self.by_stream[entry.stream]
        if entry.key:
            self.generation += 1
            self.admit_changed = True
            self._all_linked = None

    def admits(self, identity: bytes, generation: int) -> bool | None:
        """A worker's ``Admits``: True if it links ingests it did not before (their links are to be
        told, their captures may go to it now), False if nothing changed, None if no such generation
        was ever sent (not a worker here, or a generation the core has not reached)."""
        entry = self.workers.get(identity)
        if entry is None or generation > self.generation:
            return None
        if generation <= entry.admitted:
            return False  # an older answer, overtaken (the latest list is what its socket admits)
        before = entry.admitted
        entry.admitted = generation
        self._all_linked = None
        if any(before < i.since <= generation for i in self.ingests.values()):
            self.links_changed = True
            return True
        return False

    def linked(self, ingest: IngestLinkEntry, worker: WorkerLinkEntry) -> bool:
        """Whether the ingest may reach the worker: no key, or the worker admits it."""
        return not ingest.key or worker.admitted >= ingest.since

    def may(self) -> Callable[[bytes, str], bool] | None:
        """For the broker: whether a worker may be given a stream's capture now; None when every pair
        is linked (no ingest has a key, or every worker admits every key: nothing to check)."""
        if self._all_linked is None:  # worked out once a change (not per capture)
            self._all_linked = all(not i.key for i in self.ingests.values()) or all(
                e.admitted >= self.generation for e in self.workers.values()
            )
        return None if self._all_linked else self._may

    def _may(self, worker: bytes, stream: str) -> bool:
        identity = self.by_stream.get(stream)
        ingest = self.ingests.get(identity) if identity is not None else None
        # No ingest holds the stream: its picture will never come, whichever worker (the core counts it lost).
        return ingest is None or self.linked(ingest, self.workers[worker])

    def links(self, ingest: bytes | None = None) -> Workers:
        """What an ingest is told: each worker it is linked to, its number, data address and key (None:
        every worker's)."""
        entry = self.ingests.get(ingest) if ingest is not None else None
        return Workers(
            links={
                str(e.number): {"address": e.address, "key": e.key}
                for e in self.workers.values()
                if entry is None or self.linked(entry, e)
            }
        )

    def admit(self) -> Workers:
        """What every worker is told: the ingest keys its data socket lets in, and the list's generation."""
        return Workers(admit={i.key: i.name[:128] for i in self.ingests.values() if i.key}, generation=self.generation)
