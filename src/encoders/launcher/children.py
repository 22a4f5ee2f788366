"""The all-in-one command's child processes: each service as `python -m encoders COMMAND`, stopped in order.

A child gets its settings as ENCODERS_* variables on top of the launcher's environment,
less any ENCODERS_* variable no service reads: the launcher has warned about those once,
and a child would only warn again. Children run in a session of their own, so Ctrl+C
reaches the launcher alone, which orders the stop; on Linux each also gets SIGTERM should
the launcher die, so no process is ever left behind.
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

INGEST_STOP_S = 10.0
METRICS_STOP_S = 30.0
RECORDER_STOP_S = 60.0
OTHERS_STOP_S = 40.0


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
    proc: subprocess.Popen

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

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

    def spawn(self, name: str, command: str, settings: Settings, extra_env: Mapping[str, str] | None = None) -> Child:
        proc = subprocess.Popen(
            [sys.executable, "-m", "encoders", command],
            env=child_environment(self.environ, self.known, settings, extra_env),
            start_new_session=True,  # Ctrl+C reaches the launcher alone, which orders the stop
            # prctl only, no Python code that could need a lock another thread holds.
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        child = Child(name, proc)
        self.all.append(child)
        return child

    def of(self, prefix: str) -> list[Child]:
        return [c for c in self.all if c.name.startswith(prefix)]

    def dead(self) -> list[Child]:
        return [c for c in self.all if not c.alive()]

    def shutdown(self) -> int:
        """Stop in dataflow order so that every frame already read is embedded, stored and counted:
        ingest ends its streams; metrics and the recorder then finish by themselves once every
        stream's end has come through; workers and the viewer last. 1 if any failed."""
        failures = 0
        for c in self.of("ingest"):
            c.stop()
        failures += wait_all(self.of("ingest"), INGEST_STOP_S)
        failures += wait_all(self.of("metrics"), METRICS_STOP_S)
        failures += wait_all(self.of("recorder"), RECORDER_STOP_S)
        for c in self.of("encoder") + self.of("viewer"):
            c.stop()
        failures += wait_all(self.of("encoder") + self.of("viewer"), OTHERS_STOP_S)
        return 1 if failures else 0


def wait_all(children: list[Child], timeout: float) -> int:
    """Wait for each child; one that does not exit in time gets SIGTERM, then SIGKILL. Returns the failures."""
    deadline = time.monotonic() + timeout
    failures = 0
    for c in children:
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
