"""`encoders stop`: drain a running pipeline and stop it, from any machine that reaches its core.

A control session with the core (docs/PROTOCOL.md, "Stopping a pipeline from anywhere"):
Hello(role="control"), and once welcomed, Stop. The core stops taking captures, waits until
every frame has its outcome and every record is acknowledged by the recorder, stops the
workers and the recorder, answers Stopped with each stream's totals, and exits. While it
drains it says what it still waits for (Draining, every few seconds), which this command
prints on stderr. This command
prints those totals on stdout: as a table for people (``--format table``, the default), or as
one JSON object on one line for programs (``--format json``, ``totals_json``): a script or a
test that reads the totals reads that form, by the counts' names, never the table's columns
(which are the ones a stream has, in an order for the eye).

Exit codes, so that scripts can tell the cases apart:

- 0: the pipeline has stopped (its totals printed);
- 1: no Stopped within --timeout: the message says what it was waiting for (a core still
  draining, and what the core said its drain waits for, or one that went silent);
- 2: no core answered within the session's timeout (ENCODERS_HEARTBEAT_S x
  ENCODERS_HEARTBEAT_MISSES, 3 s), or it refused the session: one line, naming the address
  and the setting.

Should the core go silent and come back (a restart) before reporting, the session says
Hello again (shared/session.py) and Stop is sent again: the pipeline was asked to stop.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import typing
from collections.abc import Callable, Mapping
from typing import IO

import zmq

from encoders.shared.messages import Draining, FrameCounts, Stop, Stopped
from encoders.shared.runtime import StartupError
from encoders.shared.session import CoreSession, SessionRefused, process_name
from encoders.shared.settings import CoreConnection

SETTING = "--pipeline / ENCODERS_CORE"
# Always shown, in this order; any other count a stream has comes after them.
COLUMNS = ("published", "embedded", "dropped", "skipped", "lost")
POLL_S = 0.05  # a step at least this often: the Hello is said again until a connection takes it

EXIT_STOPPED, EXIT_TIMEOUT, EXIT_NO_CORE = 0, 1, 2
FORMATS = ("table", "json")


class StopRequest:
    """One request to stop, over ``session``: Stop once welcomed (again after each new Welcome),
    then the Stopped it waits for, at most ``timeout_s`` from the first step. Time is passed in."""

    def __init__(self, session: CoreSession, reason: str, timeout_s: float) -> None:
        self.session = session
        self.reason = reason
        self.timeout_s = timeout_s
        self.started_at: float | None = None
        self.asked_at: float | None = None  # when Stop was first sent
        self._asked_lives = 0  # the session's lives Stop was sent in
        self.waiting_for = ""  # what the drain waits for, as the core last said it (Draining)
        self.heard_draining = False  # a Draining came in the last step

    @property
    def asked(self) -> bool:
        return self.asked_at is not None

    def step(self, now: float) -> Stopped | None:
        """Hello, Stop, heartbeats; the Stopped once it has come (then ``failure`` says whether it is time
        to give up). SessionRefused if the core refuses."""
        if self.started_at is None:
            self.started_at = now
            self.session.start(now)
        self.heard_draining = False
        for msg in self.session.take(now):
            if isinstance(msg, Stopped):
                return msg
            if isinstance(msg, Draining):
                self.waiting_for, self.heard_draining = msg.waiting_for, True
        if self.session.joined and self._asked_lives < self.session.lives:
            try:
                self.session.send(Stop(self.reason), now, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # the connection went meanwhile: the session notices, and says Hello again
            else:
                self._asked_lives = self.session.lives
                if self.asked_at is None:
                    self.asked_at = now
        if self.failure(now) is None:  # (not once given up: the session would say so too)
            self.session.tick(now)
        return None

    def failure(self, now: float) -> tuple[int, str] | None:
        """(exit code, why) once it is time to give up waiting; None meanwhile."""
        if self.started_at is None:
            return None
        waited = now - self.started_at
        core = self.session.endpoint
        if self.session.lives == 0 and waited >= min(self.timeout_s, self.session.timeout_s):
            return EXIT_NO_CORE, (
                f"no answer from the core at {core} ({SETTING}) for {waited:.0f} s: is the metrics service "
                "running there, and is this the address this machine reaches it at?"
            )
        if waited < self.timeout_s:
            return None
        if self.session.joined:
            what = (
                f"waiting for {self.waiting_for}"
                if self.waiting_for
                else "frames awaiting their outcome, records the recorder has not acknowledged"
            )
            return EXIT_TIMEOUT, (
                f"the core at {core} has not reported Stopped within {self.timeout_s:g} s of being asked to stop: "
                f"it is still draining ({what}) and goes on doing so; run `encoders stop` again to wait longer"
            )
        return EXIT_TIMEOUT, (
            f"the core at {core} was asked to stop, then went silent without reporting Stopped within "
            f"{self.timeout_s:g} s: it may have exited without reporting, or be unreachable from here"
        )

    def close(self, now: float) -> None:
        self.session.close(now, "stop request done")


def totals_table(streams: Mapping[str, FrameCounts]) -> str:
    """Each stream's totals, one line each, aligned; a total line when there are several."""
    known = tuple(typing.get_type_hints(FrameCounts))
    extra = [k for k in known if k not in COLUMNS and any(c.get(k) for c in streams.values())]
    columns = [*COLUMNS, *extra]
    rows = [[name, *(_count(counts.get(c)) for c in columns)] for name, counts in sorted(streams.items())]
    if len(streams) > 1:
        # A count a stream does not keep adds nothing; one it does not know (None) makes the total unknown.
        values = [[c[k] for c in streams.values() if k in c] for k in columns]  # type: ignore[literal-required]
        rows.append(["total", *(_count(None if None in v else sum(typing.cast(list[int], v))) for v in values)])
    table = [["stream", *columns], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    return "\n".join(line.rstrip() for line in lines)


def _count(value: object) -> str:
    return "-" if value is None else str(value)


def totals_json(streams: Mapping[str, FrameCounts]) -> str:
    """The totals for programs: one JSON object on one line, ``{"streams": {NAME: {COUNT: N, ...}}}``,
    each stream's counts as the core reported them (``published`` null when it is not known)."""
    return json.dumps({"streams": {name: dict(counts) for name, counts in sorted(streams.items())}}, sort_keys=True)


def request_stop(
    core: str,
    *,
    timeout_s: float,
    reason: str,
    asked: Callable[[], None] = lambda: None,
    draining: Callable[[str], None] = lambda waiting_for: None,
) -> tuple[Stopped | None, tuple[int, str] | None]:
    """Ask the core at ``core`` to stop the pipeline and wait: (its Stopped, None), or (None, (exit
    code, why)). ``asked()`` runs once the core has been asked; ``draining(what)`` each time the core
    says what its drain still waits for (every few seconds while it does). The launcher uses this too."""
    cfg = CoreConnection.from_env(core=core)  # the heartbeat settings, as the pipeline's services read them
    ctx = zmq.Context()
    request: StopRequest | None = None
    try:
        request = StopRequest(CoreSession.from_settings(ctx, cfg, "control", setting=SETTING), reason, timeout_s)
        while True:
            now = time.monotonic()
            was_asked = request.asked
            stopped = request.step(now)
            if stopped is not None:
                return stopped, None
            if request.asked and not was_asked:
                asked()
            if request.heard_draining:
                draining(request.waiting_for)
            if failure := request.failure(now):
                return None, failure
            request.session.sock.poll(int(POLL_S * 1000))
    except (StartupError, SessionRefused) as exc:
        return None, (EXIT_NO_CORE, str(exc))
    finally:
        if request is not None:
            request.close(time.monotonic())
        ctx.term()  # a Bye still queued to a live core goes first (the socket's linger bounds it)


def run(core: str, *, timeout_s: float, reason: str = "", fmt: str = "table", out: IO[str] | None = None) -> int:
    """`encoders stop`: ask the core at ``core`` to stop the pipeline and wait for it; the exit code
    (module docstring). ``fmt``: how the totals are printed (FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    out = out or sys.stdout
    # The session's own warnings (a core gone silent) on stderr; its INFO lines are not for a command.
    logging.basicConfig(level=logging.WARNING, format="encoders stop: %(message)s", stream=sys.stderr)
    reason = reason or f"encoders stop from {process_name()}"
    try:
        stopped, failure = request_stop(
            core,
            timeout_s=timeout_s,
            reason=reason,
            asked=lambda: say(f"asked the core at {core} to stop; waiting for it to drain (at most {timeout_s:g} s)"),
            draining=lambda waiting_for: say(f"still draining: waiting for {waiting_for}"),
        )
    except KeyboardInterrupt:
        say("interrupted: if the core had been asked to stop, it goes on draining")
        return 130
    if stopped is not None:
        say(f"the pipeline at {core} has stopped")
        print(totals_json(stopped.streams) if fmt == "json" else totals_table(stopped.streams), file=out, flush=True)
        return EXIT_STOPPED
    assert failure is not None
    code, why = failure
    say(why)
    return code


def say(line: str) -> None:
    print(f"encoders stop: {line}", file=sys.stderr, flush=True)
