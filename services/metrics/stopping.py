"""Stopping the pipeline from the core (docs/PROTOCOL.md, "Stopping a pipeline from anywhere").

A control session's ``Stop`` (``encoders stop``), or a signal to the core, starts a drain:

1. every ingest is told ``Stop`` and no new one is taken (the core told them in ``begin_drain``);
   each answers ``CaptureEnded`` (then ``Bye``). One that has not within the heartbeat
   timeout is ended by the core: its later captures are refused.
2. every frame numbered gets its outcome: the workers finish what they hold; frames still
   waiting while no worker is connected are dropped after the heartbeat timeout (nobody
   would ever take them).
3. with a recorder, every record is acknowledged.

Then the workers and the recorder are told ``Stop``, and each control session that asked gets
``Stopped`` with every stream's totals; when one asked, viewers get it on the metrics publisher
(they hold no session), and exit. A signal's drain has a time limit (``deadline``): at
it, whatever is still open is ended, waiting frames dropped, held ones given up as lost, and
the core exits all the same (records not acknowledged are spooled for its next life).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .reorder import LOST
from .streams import DROPPED

if TYPE_CHECKING:
    from .service import Core

log = logging.getLogger("encoders.metrics")

SAY_EVERY = 5.0  # seconds between "still waiting for ..." lines


@dataclass
class Drain:
    reason: str
    since: float
    deadline: float | None = None  # a signal's time limit; None: until drained
    requesters: list[bytes] = field(default_factory=list)  # control sessions to answer Stopped
    said_at: float = 0.0

    def ask(self, now: float, requester: bytes | None, limit_s: float | None) -> None:
        """Someone (else) asks to stop: answer them too; a time limit shortens the wait."""
        if requester is not None and requester not in self.requesters:
            self.requesters.append(requester)
        if limit_s is not None:
            limit = now + limit_s
            self.deadline = limit if self.deadline is None else min(self.deadline, limit)

    def step(self, core: Core, now: float) -> bool:
        """Move the drain on; True once it is over (drained, or out of time)."""
        timeout = core.sessions.timeout_s
        out_of_time = self.deadline is not None and now >= self.deadline
        for ingest in core.ingests.open():
            if out_of_time or (ingest.stop_sent is not None and now - ingest.stop_sent > timeout):
                core.ingests.end_for(ingest)
        if core.broker.frames_waiting and (out_of_time or (not core.broker.workers and now - self.since > timeout)):
            for frame in core.broker.drop_waiting():
                core.streams.outcome(frame.stream, frame.seq, DROPPED, now)
        if out_of_time:
            for stream, seq in core.broker.give_up_held():
                core.streams.outcome(stream, seq, LOST, now)
        core.release(now)  # what the above settled goes out now
        waiting_for = self.waiting_for(core)
        if not waiting_for:
            log.info("drained (%s)", self.reason)
            return True
        if out_of_time:
            log.warning("stopping without having drained (%s): %s", self.reason, "; ".join(waiting_for))
            return True
        if now - self.said_at >= SAY_EVERY:
            self.said_at = now
            log.info("stopping: waiting for %s", "; ".join(waiting_for))
        return False

    @staticmethod
    def waiting_for(core: Core) -> list[str]:
        """What the drain still waits for, in words (empty: drained)."""
        out = []
        open_ingests = [i.stream for i in core.ingests.open()]
        if open_ingests:
            out.append(f"the capture of {', '.join(open_ingests)} to end")
        if core.broker.frames_waiting:
            out.append(f"{core.broker.frames_waiting} frames waiting for a worker")
        if core.broker.in_use:
            out.append(f"{core.broker.in_use} frames in workers' hands")
        unsettled = core.streams.unsettled()
        if unsettled and not open_ingests:
            out.append(f"outcomes of {', '.join(unsettled)}")
        delivery = core.delivery
        if delivery is not None and not delivery.settled:
            stats = delivery.stats()
            held = stats["records_held"]
            who = "the recorder" if core.recorders.ready is not None else "a recorder (none is ready)"
            out.append(f"{who} to acknowledge records ({held} held, {stats['spool_bytes']} bytes spooled)")
        return out
