"""The all-in-one command's child processes: started as `python -m encoders COMMAND`, restarted like compose would.

A child gets its settings as ENCODERS_* variables on top of the launcher's environment,
less any ENCODERS_* variable no service reads: the launcher has warned about those once,
and a child would only warn again. Children run in a session of their own, so Ctrl+C
reaches the launcher alone, which orders the stop; on Linux each also gets SIGTERM should
the launcher die, so no process is ever left behind.

A child that exits when nobody asked it to (a crash, a kill, an error exit) is started
again after a backoff (1 s, doubling up to 30 s, with jitter; back to 1 s once it has run a minute),
and counted: the protocol makes a restarted service rejoin and lose nothing
(docs/PROTOCOL.md). A child that keeps failing, FAIL_LIMIT times in a row within
FAIL_WITHIN_S of its start each time, stops the run.

A child that hangs fails too (issue #22: a recorder that stopped answering through the
final drain left its records undelivered). ``Liveness`` asks each child's ``/healthz`` (beside
its Prometheus metrics: shared/exporter.py) every HEALTH_EVERY_S on a thread of its own; a
child that answered once and then gives no answer at all for ``hang_after`` seconds (stopped, or
wedged in a way that takes its whole process) is killed, and so started again. Any answer
counts, "unhealthy" included: a recorder whose database is away is working as it should.
A child whose metrics are off (ENCODERS_PROMETHEUS_PORT=none or 0) is not watched.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from encoders.shared.backoff import Backoff
from encoders.shared.health import WEDGED, NoHealthPort, ask, health_url
from encoders.shared.settings import ENV_PREFIX, Exported, Settings

log = logging.getLogger("encoders.run")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long is healthy again: its backoff starts over
FAIL_LIMIT = 5
FAIL_WITHIN_S = 30.0
STOP_WAIT_S = 60.0  # at the end, how long children may take to finish before SIGTERM, then SIGKILL
HEALTH_EVERY_S = 2.0  # how often each child's /healthz is asked
HEALTH_TIMEOUT_S = 2.0
SERVICE_OF = {"metrics": "metrics", "record": "recorder", "encode": "encoder", "ingest": "ingest", "view": "viewer"}


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
    backoff: Backoff = field(default_factory=lambda: Backoff(BACKOFF_START_S, BACKOFF_MAX_S))
    restart_at: float | None = None  # when a child that died is to be started again
    done: bool = False  # it finished on purpose (its stream ended, the pipeline stopped): left alone
    health: str | None = None  # its /healthz, if it serves one
    answered: float | None = None  # when /healthz last answered, in this process's life (Liveness)

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
    hang_after: float = 20.0  # seconds without any answer to /healthz after a first one: hung (0: never)
    all: list[Child] = field(default_factory=list)

    def spawn(self, name: str, command: str, settings: Settings) -> Child:
        if isinstance(settings, Exported) and settings.prometheus_port == "0":
            # Any free port: chosen here, so that its /healthz is known and watched.
            settings = dataclasses.replace(settings, prometheus_port=str(free_port(settings.prometheus_host)))
        child = Child(name, command, settings, self._start(command, settings), started=time.monotonic())
        child.health = health_of(command, settings)
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
            if self._hung(child, now):
                silent = now - (child.answered or now)
                log.error("%s has not answered for %.0f s (%s): hung; killing it", child.name, silent, child.health)
                child.proc.kill()
                child.proc.wait()
            if child.done or child.alive():
                continue
            code = child.proc.returncode
            if child.restart_at is None:
                if ended_on_purpose(child):
                    child.done = True
                    continue
                ran = now - child.started
                if ran >= HEALTHY_AFTER_S:
                    child.failures_in_row = 0
                    child.backoff.reset()
                else:
                    child.failures_in_row += 1
                if child.failures_in_row >= FAIL_LIMIT and ran < FAIL_WITHIN_S:
                    return f"{child.name} keeps failing (exit code {code}, {child.failures_in_row} times in a row)"
                delay = child.backoff.next()
                child.restart_at = now + delay
                log.error("%s exited unexpectedly (code %s): starting it again in %.0f s", child.name, code, delay)
            elif now >= child.restart_at:
                child.proc = self._start(child.command, child.settings)
                child.started, child.restart_at, child.answered = now, None, None
                child.restarts += 1
                log.info("%s started again (restart %d)", child.name, child.restarts)
        return None

    def _hung(self, child: Child, now: float) -> bool:
        answered = child.answered
        return bool(self.hang_after) and child.alive() and answered is not None and now - answered > self.hang_after

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


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def health_of(command: str, settings: Settings) -> str | None:
    """A child's /healthz, where its settings serve one."""
    service = SERVICE_OF.get(command)
    if service is None or not isinstance(settings, Exported):
        return None
    try:
        return health_url(service, settings)
    except NoHealthPort:
        return None


class Liveness:
    """Asks every running child's /healthz in turn, on a thread of its own; notes when each answered."""

    def __init__(self, children: Children) -> None:
        self.children = children
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="liveness", daemon=True)

    def __enter__(self) -> Liveness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(HEALTH_TIMEOUT_S + 1)

    def _watch(self) -> None:
        while not self._stop.wait(HEALTH_EVERY_S):
            for child in list(self.children.all):
                if child.health is None or not child.alive():
                    continue
                proc = child.proc
                answered, said = ask(child.health, HEALTH_TIMEOUT_S)
                # Any answer says it is alive, unhealthy or not; but a wedged loop (its exporter's
                # thread answering for it, shared/exporter.py) is as good as silence.
                alive = answered or not (said.startswith("no answer") or WEDGED in said)
                if alive and child.proc is proc:
                    child.answered = time.monotonic()
