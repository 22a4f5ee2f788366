"""A disk that fills up, said in one line: what could not be written, where, and how full its disk is.

A full disk shows itself in many places at once (a spool, summary.json, the database's own
files, initdb) and in words that do not name it ("[Errno 28] No space left on device", "could
not extend file"). Every such message goes through here, so that it names the path and the
cause, and someone reading one line knows what to free.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

FULL_BELOW = 16 * 2**20  # bytes free under which a disk counts as full (PostgreSQL needs room to write)


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free on the disk of ``path`` (its nearest existing folder), or None if unknown."""
    here = Path(path).resolve()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def full_disk(path: str | os.PathLike) -> str:
    """'the disk of PATH is full (N MB free)' when it is, else ''."""
    free = free_bytes(path)
    if free is None or free >= FULL_BELOW:
        return ""
    return f"the disk of {path} is full ({free / 2**20:.0f} MB free)"


def disk_problem(exc: OSError, path: str | os.PathLike) -> str:
    """An OSError from writing ``path`` in one line: what, where, and a full disk when it is one."""
    where = exc.filename or path
    said = f"cannot write {where}: {exc.strerror or exc}"
    full = full_disk(path)
    if full or exc.errno == errno.ENOSPC:
        said += f"; {full or f'the disk of {path} is full'}: free some space there"
    return said
