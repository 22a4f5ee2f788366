"""Rows the database refuses for good, found and set aside, so that one bad row never blocks a spool (issue #12).

A batch is one COPY in one transaction: a single row the database cannot take (a NaN in a
vector, a timestamp out of range, a constraint) fails the whole batch, every time it is
tried. Replayed as it was, such a batch would hold up every row spooled after it for ever.

``write_isolating`` writes a batch, and when it is refused for the data of a row, writes
each half of it instead, and so on down to single rows: every good row is written, and
each refused one is appended to ``db_quarantine.msgpack`` beside the spool (the spool's own
format: renamed db_spool.msgpack, a recorder would try it again), counted and logged once.
A batch of n rows with one bad row costs about 2 log2(n) writes.

What is a row's fault is told by the database's error class: SQLSTATE 22 (data exception)
and 23 (integrity constraint), or a value that cannot even be encoded. Any other refusal
(no permission, a frames table of another shape, a newer schema) is the database's and
would refuse every row: it is not quarantined, it stops the recorder with its rows kept in
the spool, as before.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from encoders.shared.spool import Spool
from encoders.shared.storage.errors import DatabaseRefused
from encoders.shared.storage.frames import FrameRow

from .rows import to_spool

log = logging.getLogger(__name__)

QUARANTINE_NAME = "db_quarantine.msgpack"
# Errors a row's data can cause while it is being encoded (a capture time past year 9999...).
ENCODING_ERRORS = (ValueError, OverflowError)


class RowsRefused(RuntimeError):
    """A batch was refused for the data of (at least) one of its rows."""


def row_refusal(exc: BaseException) -> bool:
    """Whether the database refused the data of a row, not the write itself."""
    if isinstance(exc, ENCODING_ERRORS):
        return True
    if not isinstance(exc, DatabaseRefused):
        return False
    state = getattr(exc.__cause__, "sqlstate", None) or ""
    return state[:2] in ("22", "23")


class Quarantine:
    """``db_quarantine.msgpack`` in a run's folder: rows (as spooled) the database will never take."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / QUARANTINE_NAME
        self.count = 0  # rows set aside by this object

    def add(self, record: Any, reason: str) -> None:
        spool = Spool(self.path)
        try:
            spool.append([record])  # synced before it counts as kept
        finally:
            spool.close()
        self.count += 1
        if self.count == 1:
            log.error(
                "the database refused a row for good (%s): moved to %s; the other rows go on (further ones are "
                "only counted)",
                reason,
                self.path,
            )


def write_isolating(
    write: Callable[[list[FrameRow]], Counter], rows: list[FrameRow], quarantine: Quarantine
) -> Counter:
    """Write ``rows``; the ones refused for their data, found by halving the batch, go to ``quarantine``.

    Returns the rows inserted, per stream. DatabaseUnavailable and refusals that are not a
    row's (``row_refusal``) pass through: whatever was written before them stays written.
    """
    if not rows:
        return Counter()
    try:
        return write(rows)
    except (DatabaseRefused, *ENCODING_ERRORS) as exc:
        if not row_refusal(exc):
            raise
        if len(rows) == 1:
            row = rows[0]
            quarantine.add(to_spool(row), f"{row.stream} seq {row.seq}: {exc}")
            return Counter()
    mid = len(rows) // 2
    return write_isolating(write, rows[:mid], quarantine) + write_isolating(write, rows[mid:], quarantine)
