"""The recorder's side of the core: its one session, a takeover, its Ready and Acks
(docs/PROTOCOL.md, "The recorder: acknowledged delivery"): its Acks, one message for all streams.

What is held for the recorder, and when it is sent, is delivery.py's; this keeps who the
recorder is: the session from its Hello (one at a time: a second is refused unless it takes
over), the session records go to once it said Ready, and the run the last recorder said it
records (the next one's Welcome names it; kept in the state folder, so a core started again
names it too). ``RecorderRole`` is the recorder's role (roles.py), which the core dispatches
the recorder's Hello, messages and departure to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from encoders.shared.complaints import Complaints
from encoders.shared.core_state import LAST_RUN, last_run_of
from encoders.shared.messages import Acks, Bye, Hello, Message, NoPictures, Ready, WantPictures
from encoders.shared.session import Peer, Sessions

from .delivery import Delivery
from .numbering import Numbering, write_atomically
from .roles import Evict, Refusal, Send

log = logging.getLogger("encoders.metrics")

# A recorder unheard for this many heartbeats counts as silent: a second recorder is then told to
# try again (its predecessor most likely crashed) rather than refused for good. A healthy recorder
# says something at least once a heartbeat (a Heartbeat when it has nothing else to say), so one
# heartbeat of silence it reaches all the time (a heartbeat's jitter, a batch being written); two
# it does not. Below the session's timeout (3 heartbeats by default), when it counts as gone.
SILENT_HEARTBEATS = 2
ASKED_MAX = 64  # recorders refused for now that are remembered (when each first asked)


def silent_after(sessions: Sessions) -> float:
    """The silence, in seconds, after which a recorder's session counts as silent (SILENT_HEARTBEATS)."""
    return min(SILENT_HEARTBEATS * sessions.heartbeat_s, sessions.timeout_s)


class Recorders:
    def __init__(self, delivery: Delivery | None, numbering: Numbering, state_dir: Path | None = None) -> None:
        self.delivery, self.numbering = delivery, numbering
        self.joined: bytes | None = None  # the recorder's session, from its Hello
        self.ready: bytes | None = None  # the same, once it said Ready: records go to it
        self.state_dir = state_dir
        # When each recorder refused because another holds the session first asked (bounded, oldest
        # forgotten first): within a session timeout of it, the holder may be the one it replaces.
        self.first_asked: dict[bytes, float] = {}
        # The run the last recorder said it records, in this life or (kept in the state folder) an earlier one.
        self.last_run = last_run_of(state_dir) if state_dir is not None else ""

    def refusal(
        self,
        identity: bytes,
        hello: Hello,
        name_of: Callable[[bytes], str | None],
        silent: Callable[[bytes], bool] = lambda identity: False,
        patient: bool = False,
    ) -> str | tuple[str, bool] | None:
        """Why this recorder cannot join, or None: a reason (it exits), or (a reason, True) when it
        may try again. ``name_of``: a live session's name; ``silent``: whether a session has been
        silent for longer than a healthy one ever is (``silent_after``); ``patient``: this recorder
        first asked less than a session timeout ago."""
        if self.delivery is None:
            return "this core keeps no records for a recorder (it runs with --no-recorder)"
        holder = self.holder(identity)
        if holder is not None and not hello.takeover:
            if silent(holder):
                # Most likely the one this recorder replaces after a crash, not yet counted gone:
                # try again once it is, rather than exit (and be restarted by compose, and so on).
                return f"recorder {name_of(holder)} has been silent: once it counts as gone", True
            if patient:
                # A recorder killed and started again at once says Hello before the dead one has been
                # silent two heartbeats: it too waits, for a session timeout at most, by when a dead
                # one counts as gone. A second recorder beside a live one is refused for good then.
                return f"a recorder ({name_of(holder)}) is connected: once it counts as gone, if it is", True
            return f"a recorder ({name_of(holder)}) is connected already: --takeover replaces it"
        return None

    def refusal_among(
        self, sessions: Sessions, identity: bytes, hello: Hello, now: float
    ) -> str | tuple[str, bool] | None:
        """``refusal``, with the names and silences of ``sessions`` (the core's, or a stand-in's)."""
        silence = silent_after(sessions)
        first = self.first_asked.setdefault(identity, now)
        while len(self.first_asked) > ASKED_MAX:
            del self.first_asked[next(iter(self.first_asked))]
        return self.refusal(
            identity,
            hello,
            lambda i: sessions.peers[i].name,
            lambda i: now - sessions.peers[i].last_heard > silence,
            patient=now - first < sessions.timeout_s,
        )

    def holder(self, identity: bytes) -> bytes | None:
        """The session of another recorder, if one is joined."""
        return self.joined if self.joined is not None and self.joined != identity else None

    def join(self, identity: bytes, hello: Hello) -> str:
        """A recorder's session; the run its Welcome names."""
        self.joined = identity
        self.first_asked.pop(identity, None)
        log.info("recorder %s joined%s", hello.name, f" (it records run {hello.run})" if hello.run else "")
        return self.last_run

    def leave(self, identity: bytes, name: str, why: str) -> None:
        if self.joined == identity:
            self.joined = None
        if self.ready == identity and self.delivery is not None:
            self.ready = None
            self.delivery.end_session()
        log.info("recorder %s left: %s", name, why)

    def take(self, identity: bytes, name: str, msg: Ready | Acks) -> None:
        assert self.delivery is not None  # a recorder is refused without
        if isinstance(msg, Acks):
            for stream, ack in msg.streams.items():  # each as protocol 2's Ack of that stream
                self.delivery.ack(stream, ack["seq"], ack["ended"])
            return
        if msg.run != self.last_run and self.state_dir is not None:
            try:
                write_atomically(self.state_dir / LAST_RUN, {"run": msg.run})
            except OSError as exc:  # the records still go to this recorder; only a restart forgets the run
                log.error("cannot note the recorder's run in %s: %s", self.state_dir / LAST_RUN, exc)
        self.last_run = msg.run
        for stream, stored in msg.stored.items():
            if self.numbering.raise_floor(stream, stored):
                log.info("stream %s: the recorder stored up to %d, numbering goes on above it", stream, stored)
        self.ready = identity
        self.delivery.start_session()  # everything not acknowledged goes to it, oldest first
        stats = self.delivery.stats()
        log.info(
            "recorder %s ready: run %s; %d records held for it, %d bytes spooled",
            name,
            msg.run or "?",
            stats["records_held"],
            stats["spool_bytes"],
        )

    def pump(self, send: Callable[[bytes, Message], bool]) -> None:
        """Send the ready recorder what is due."""
        if self.delivery is not None and self.ready is not None:
            recorder = self.ready
            self.delivery.pump(lambda msg: send(recorder, msg))


class RecorderRole:
    """The recorder's role: one at a time (a second refused, or told to try again while the first is
    silent, unless it takes over), its Welcome naming the publishers and the last run, what is due
    sent to it once a turn, the pictures its snapshots want asked of their ingests."""

    takes: tuple[type[Message], ...] = (Ready, Acks, WantPictures)

    def __init__(
        self,
        recorders: Recorders,
        sessions: Sessions,
        *,
        send: Send,
        evict: Evict,
        publishers: tuple[str, str],
        want_pictures: Callable[[WantPictures, float], bool],
        complain: Complaints,
    ) -> None:
        """``sessions``: the names and silences of the recorders' sessions; ``publishers``: (frames,
        metrics) as bound, which its Welcome names; ``want_pictures``: asks the stream's ingest (False:
        it has none), which answers from its ring, the core handing the pictures on."""
        self.recorders, self.sessions, self.send, self.evict = recorders, sessions, send, evict
        self.publishers, self.want_pictures, self.complain = publishers, want_pictures, complain

    def refusal(self, identity: bytes, hello: Hello, now: float) -> Refusal:
        said = self.recorders.refusal_among(self.sessions, identity, hello, now)
        if said is not None:
            return said
        holder = self.recorders.holder(identity)
        if holder is not None:  # it takes over: the first stops, writing what it holds
            log.warning("recorder %s takes over from recorder %s", hello.name, self.sessions.peers[holder].name)
            self.evict(holder, Bye("taken over"), f"taken over by {hello.name}", now)
        return None

    def join(self, peer: Peer, hello: Hello, now: float) -> Mapping[str, Any]:
        frames, metrics = self.publishers
        return {"run": self.recorders.join(peer.identity, hello), "frames": frames, "metrics": metrics}

    def leave(self, peer: Peer, why: str, now: float) -> None:
        self.recorders.leave(peer.identity, peer.name, why)

    def take(self, peer: Peer, msg: Message, now: float) -> None:
        assert isinstance(msg, Ready | Acks | WantPictures)  # the core dispatches only what ``takes`` names
        if not isinstance(msg, WantPictures):
            self.recorders.take(peer.identity, peer.name, msg)
        elif not self.want_pictures(msg, now):
            self.complain("pictures_unavailable", "the recorder wants pictures of %s, whose ingest is gone", msg.stream)
            self.send(peer.identity, NoPictures.of(msg.stream, msg.seqs()), now)  # it need not wait for them

    def tick(self, now: float) -> None:
        self.recorders.pump(lambda identity, msg: self.send(identity, msg, now))
