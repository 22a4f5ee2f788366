"""What a core keeps in its state folder (``ENCODERS_STATE_DIR``), as others read it.

The folder holds each stream's frame numbers' high-water mark (``numbering.json``:
services/metrics/numbering.py), the records not yet acknowledged by a recorder
(``records.spool``: services/metrics/delivery.py) and the run the last recorder said it
records (``recorder.json``): those records are that run's. A core started again on the
folder sends the spool to the next recorder and names it the run; where no core is to start
again, `encoders runs repair` (and the all-in-one command at its next start) stores the
spool into that run without one (services/recorder/left_records.py).

``StateDir`` holds the folder for one process at a time (an exclusive ``flock`` on
``core.lock``): a core, or whoever stores its spool while no core runs.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO

from .runtime import StartupError

RECORDS_SPOOL = "records.spool"
LAST_RUN = "recorder.json"


def last_run_of(state_dir: str | Path) -> str:
    """The run the last recorder of a core on ``state_dir`` said it records ("" if none said)."""
    try:
        run = json.loads((Path(state_dir) / LAST_RUN).read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        return ""
    return run if isinstance(run, str) else ""


class StateDir:
    """A core's state folder, locked for this process (StartupError if it cannot be)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock: IO[bytes] | None = open(self.path / "core.lock", "a+b")  # noqa: SIM115 - held for our life
        except OSError as exc:
            raise StartupError(
                f"cannot use the state folder {self.path} (--state-dir / ENCODERS_STATE_DIR): {exc}"
            ) from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StartupError(
                f"the state folder {self.path} (--state-dir / ENCODERS_STATE_DIR) is in use by another core: "
                "each core needs its own"
            ) from None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None
