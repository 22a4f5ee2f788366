"""The all-in-one command's child processes: started as `python -m encoders COMMAND`, restarted like compose would.

A child gets its settings as ENCODERS_* variables on top of the launcher's environment,
less any ENCODERS_* variable no service reads: the launcher has warned about those once,
and a child would only warn again. Children run in a session of their own, so Ctrl+C
reaches the launcher alone, which orders the stop; on Linux each also gets SIGTERM should
the launcher die, so no process is ever left behind.

A child that exits when nobody asked it to (a crash, a kill, an error exit) is started
again after a backoff (1 s, doubling up to 30 s; back to 1 s once it has run a minute),
and counted: the protocol makes a restarted service rejoin and lose nothing
(docs/PROTOCOL.md). A child that keeps failing, FAIL_LIMIT times in a row within
FAIL_WITHIN_S of its start each time, stops the run.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from encoders.shared.settings import ENV_PREFIX, Settings

log = logging.getLogger("encoders.run")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long is healthy again: its backoff starts over
FAIL_LIMIT = 5
FAIL_WITHIN_S = 30.0
STOP_WAIT_S = 60.0  # at the end, how long children may take to finish before SIGTERM, then SIGKILL


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM if the launcher dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def child_environment(
    environ: Mapping[str, str], known: set[str], settings: Settings, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The launcher's environment without unknown ENCODERS_* variables, then the child's settings."""
    inherited = {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX) or k in known}
    return {**inherited, **settings.to_env(), **(extra or {})}


@dataclass
class Child:
    name: str
    command: str
    settings: Settings
    proc: subprocess.Popen
    started: float
    restarts: int = 0
    failures_in_row: int = 0
    restart_at: float | None = None  # when a child that died is to be started again
    done: bool = False  # it finished on purpose (its stream ended, the pipeline stopped): left alone

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None


@dataclass
class Children:
    environ: Mapping[str, str]
    known: set[str]
    all: list[Child] = field(default_factory=list)

    def spawn(self, name: str, command: str, settings: Settings) -> Child:
        child = Child(name, command, settings, self._start(command, settings), started=time.monotonic())
        self.all.append(child)
        return child

    def of(self, prefix: str) -> list[Child]:
        return [c for c in self.all if c.name.startswith(prefix)]

    def running(self) -> list[Child]:
        return [c for c in self.all if c.alive()]

    def supervise(self, now: float, *, ended_on_purpose) -> str | None:
        """Restart what died unasked, when its backoff is over. ``ended_on_purpose(child)`` says
        whether an exit was the child's natural end. Returns why the run must stop, or None."""
        for child in self.all:
            if child.done or child.alive():
                continue
            code = child.proc.returncode
            if child.restart_at is None:
                if ended_on_purpose(child):
                    child.done = True
                    continue
                ran = now - child.started
                child.failures_in_row = 0 if ran >= HEALTHY_AFTER_S else child.failures_in_row + 1
                if child.failures_in_row >= FAIL_LIMIT and ran < FAIL_WITHIN_S:
                    return f"{child.name} keeps failing (exit code {code}, {child.failures_in_row} times in a row)"
                delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** max(0, child.failures_in_row - 1))
                child.restart_at = now + delay
                log.error("%s exited unexpectedly (code %s): starting it again in %.0f s", child.name, code, delay)
            elif now >= child.restart_at:
                child.proc = self._start(child.command, child.settings)
                child.started, child.restart_at = now, None
                child.restarts += 1
                log.info("%s started again (restart %d)", child.name, child.restarts)
        return None

    def restarts(self) -> dict[str, int]:
        return {c.name: c.restarts for c in self.all if c.restarts}

    def wait_all(self, timeout: float = STOP_WAIT_S) -> int:
        """Wait for every child to finish; one still running then gets SIGTERM, then SIGKILL.
        Returns how many ended badly."""
        deadline = time.monotonic() + timeout
        failures = 0
        for c in self.all:
            if c.restart_at is not None and not c.alive():
                continue  # it was waiting to be started again: nothing to wait for
            if c.wait(deadline - time.monotonic()) is None:
                log.warning("%s still running after %.0f s: terminating it", c.name, timeout)
                c.stop()
                if c.wait(15) is None:
                    log.error("%s did not stop: killing it", c.name)
                    c.proc.kill()
                    c.proc.wait()
            code = c.proc.returncode
            if code not in (0, -signal.SIGTERM):
                log.error("%s exited with code %s", c.name, code)
                failures += 1
        return failures

    def _start(self, command: str, settings: Settings) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "encoders", command],
            env=child_environment(self.environ, self.known, settings),
            start_new_session=True,  # Ctrl+C reaches the launcher alone, which orders the stop
            # prctl only, no Python code that could need a lock another thread holds.
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
