"""The recorder's side of the core: its one session, a takeover, its Ready and Acks
(docs/PROTOCOL.md, "The recorder: acknowledged delivery").

What is held for the recorder, and when it is sent, is delivery.py's; this keeps who the
recorder is: the session from its Hello (one at a time: a second is refused unless it takes
over), the session records go to once it said Ready, and the run the last recorder said it
records (the next one's Welcome names it; kept in the state folder, so a core started again
names it too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from encoders.shared.core_state import LAST_RUN, last_run_of
from encoders.shared.messages import Ack, Hello, Message, Ready

from .delivery import Delivery
from .numbering import Numbering, write_atomically

log = logging.getLogger("encoders.metrics")


class Recorders:
    def __init__(self, delivery: Delivery | None, numbering: Numbering, state_dir: Path | None = None) -> None:
        self.delivery, self.numbering = delivery, numbering
        self.joined: bytes | None = None  # the recorder's session, from its Hello
        self.ready: bytes | None = None  # the same, once it said Ready: records go to it
        self.state_dir = state_dir
        # The run the last recorder said it records, in this life or (kept in the state folder) an earlier one.
        self.last_run = last_run_of(state_dir) if state_dir is not None else ""

    def refusal(
        self,
        identity: bytes,
        hello: Hello,
        name_of: Callable[[bytes], str | None],
        silent: Callable[[bytes], bool] = lambda identity: False,
    ) -> str | tuple[str, bool] | None:
        """Why this recorder cannot join, or None: a reason (it exits), or (a reason, True) when it
        may try again. ``name_of``: a live session's name; ``silent``: whether a session has been
        silent for a heartbeat or more."""
        if self.delivery is None:
            return "this core keeps no records for a recorder (it runs with --no-recorder)"
        holder = self.holder(identity)
        if holder is not None and not hello.takeover:
            if silent(holder):
                # Most likely the one this recorder replaces after a crash, not yet counted gone:
                # try again once it is, rather than exit (and be restarted by compose, and so on).
                return f"recorder {name_of(holder)} has been silent: once it counts as gone", True
            return f"a recorder ({name_of(holder)}) is connected already: --takeover replaces it"
        return None

    def holder(self, identity: bytes) -> bytes | None:
        """The session of another recorder, if one is joined."""
        return self.joined if self.joined is not None and self.joined != identity else None

    def join(self, identity: bytes, hello: Hello) -> str:
        """A recorder's session; the run its Welcome names."""
        self.joined = identity
        log.info("recorder %s joined%s", hello.name, f" (it records run {hello.run})" if hello.run else "")
        return self.last_run

    def leave(self, identity: bytes, name: str, why: str) -> None:
        if self.joined == identity:
            self.joined = None
        if self.ready == identity and self.delivery is not None:
            self.ready = None
            self.delivery.end_session()
        log.info("recorder %s left: %s", name, why)

    def take(self, identity: bytes, name: str, msg: Ready | Ack) -> None:
        assert self.delivery is not None  # a recorder is refused without
        if isinstance(msg, Ack):
            self.delivery.ack(msg.stream, msg.seq, msg.ended)
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
