"""Stopping the pipeline from the core (docs/PROTOCOL.md, "Stopping a pipeline from anywhere").

A control session's ``Stop`` (``encoders stop``), or a signal to the core, starts a drain:

1. every ingest is told ``Stop`` and no new one is taken (the core told them in ``begin_drain``);
   each answers ``CaptureEnded`` (then ``Bye``). One that has not within the heartbeat
   timeout is ended by the core: its later captures are refused.
2. every frame numbered gets its outcome: the workers finish what they hold; frames still
   waiting while no worker is connected are dropped after the heartbeat timeout (nobody
   would ever take them). Outcomes still missing once every capture has ended and no frame
   is waiting or held have nobody left to bring them (a fault: logged as an error): they are
   given up as lost a heartbeat timeout later, so that a stop never hangs on them.
3. with a recorder, every record is acknowledged.

Then the workers and the recorder are told ``Stop``, and each control session that asked gets
``Stopped`` with every stream's totals; when one asked, viewers get it on the metrics publisher
(they hold no session), and exit. A signal's drain has a time limit (``deadline``): at
it, whatever is still open is ended, waiting frames dropped, held ones given up as lost, and
the core exits all the same (records not acknowledged are spooled for its next life).

``Drain`` reads the core's progress (progress.py) and decides: what to give up now
(``give_up``), then whether it is over (``step``: ``Finish`` or ``Wait``); the core does it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .progress import Progress

log = logging.getLogger("encoders.metrics")

SAY_EVERY = 5.0  # seconds between "still waiting for ..." lines


@dataclass(frozen=True)
class GiveUp:
    """What the drain gives up now: the epochs of these streams' ingests (told to Stop long enough
    ago, or out of time) ended, the frames waiting for a worker dropped, those held given up as lost."""

    ingests: list[str] = field(default_factory=list)
    waiting: bool = False
    held: bool = False
    unowned: bool = False  # outcomes that nothing left could bring (streams.py give_up_unowned)


@dataclass(frozen=True)
class Finish:
    """The drain is over: drained, or out of time (then ``left`` says what it did not wait for)."""

    left: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Wait:
    """The drain goes on, waiting for these; ``say``: time to say so (logged, and told to whoever asked)."""

    waiting_for: list[str]
    say: bool = False


@dataclass
class Drain:
    reason: str
    since: float
    timeout_s: float  # the sessions' heartbeat timeout: how long an ingest or a missing worker is waited for
    deadline: float | None = None  # a signal's time limit; None: until drained
    requesters: list[bytes] = field(default_factory=list)  # control sessions to answer Stopped
    unowned_since: float | None = None  # since when outcomes are missing that nothing is left to bring
    said_at: float = float("-inf")  # when it last said what it waits for: at once, then every SAY_EVERY

    def ask(self, now: float, requester: bytes | None, limit_s: float | None) -> None:
        """Someone (else) asks to stop: answer them too; a time limit shortens the wait."""
        if requester is not None and requester not in self.requesters:
            self.requesters.append(requester)
        if limit_s is not None:
            limit = now + limit_s
            self.deadline = limit if self.deadline is None else min(self.deadline, limit)

    def out_of_time(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def give_up(self, progress: Progress, now: float) -> GiveUp:
        """What to give up now: the core does it, and releases what that settled, before ``step``."""
        timeout, out_of_time = self.timeout_s, self.out_of_time(now)
        ingests = [
            ingest.stream
            for ingest in progress.open_ingests
            if out_of_time or (ingest.stop_sent is not None and now - ingest.stop_sent > timeout)
        ]
        waiting = bool(progress.frames_waiting) and (
            out_of_time or (not progress.workers and now - self.since > timeout)
        )
        # Every capture ended, no frame waiting or in a worker's hands, and still a stream's outcomes
        # are not all out: what is missing has no owner left (a fault of the core's: logged as one).
        # Given up as lost a timeout later, so that a drain never waits for what cannot come.
        unowned = bool(progress.unsettled) and not (progress.open_ingests or progress.frames_waiting or progress.in_use)
        if not unowned:
            self.unowned_since = None
        elif self.unowned_since is None:
            self.unowned_since = now
        orphans = unowned and self.unowned_since is not None and now - self.unowned_since > timeout
        return GiveUp(ingests, waiting, held=out_of_time, unowned=orphans)

    def step(self, progress: Progress, now: float) -> Finish | Wait:
        """Whether the drain is over (drained, or out of time), from what is left."""
        waiting_for = self.waiting_for(progress)
        if not waiting_for:
            log.info("drained (%s)", self.reason)
            return Finish()
        if self.out_of_time(now):
            log.warning("stopping without having drained (%s): %s", self.reason, "; ".join(waiting_for))
            return Finish(waiting_for)
        if now - self.said_at >= SAY_EVERY:
            self.said_at = now
            log.info("stopping: waiting for %s", "; ".join(waiting_for))
            return Wait(waiting_for, say=True)
        return Wait(waiting_for)

    @staticmethod
    def waiting_for(progress: Progress) -> list[str]:
        """What the drain still waits for, in words (empty: drained)."""
        out = []
        open_ingests = [i.stream for i in progress.open_ingests]
        if open_ingests:
            out.append(f"the capture of {', '.join(open_ingests)} to end")
        if progress.frames_waiting:
            out.append(f"{progress.frames_waiting} frames waiting for a worker")
        if progress.in_use:
            out.append(f"{progress.in_use} frames in workers' hands")
        unsettled = progress.unsettled
        if unsettled and not open_ingests:
            out.append(f"outcomes of {', '.join(unsettled)}")
        records = progress.records
        if records is not None and not progress.records_settled:
            held = records["records_held"]
            who = "the recorder" if progress.recorder_ready else "a recorder (none is ready)"
            out.append(f"{who} to acknowledge records ({held} held, {records['spool_bytes']} bytes spooled)")
        return out
