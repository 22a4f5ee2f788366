"""A run folder held by a live recorder: an exclusive ``flock`` on ``<run>/.recorder.lock``.

A run whose row is open (``ended_at`` NULL) is either being recorded, or was left open by a
recorder that died. The lock tells them apart: the recorder of a run holds it from the
moment the folder is made until the run's row is ended, and the system releases it however
the process ends (a SIGKILL included). A recorder that resumes a run, or closes one left
open (repair.py), takes it first; one held elsewhere is left alone.

The file is removed when its holder lets go, after the run's row is ended: a folder of a
finished run holds no lock file. (Whoever takes the lock checks that the file it locked is
still the one at the path: a holder may have removed it in between.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = ".recorder.lock"


class RunLock:
    def __init__(self, path: Path, file: IO[bytes]):
        self.path = path
        self._file: IO[bytes] | None = file

    @classmethod
    def take(cls, folder: str | os.PathLike) -> RunLock | None:
        """The lock of the run in ``folder``, or None when a live process holds it."""
        path = Path(folder) / LOCK_NAME
        while True:
            f = open(path, "a+b")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                return None
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, f)
            f.close()  # its holder removed it as we opened it: lock the one there now

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        """Let go, removing the file (the run's row is ended, or its owner leaves it open for a later one)."""
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()
            self._file = None
