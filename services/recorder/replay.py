"""Rows earlier recorders left in their spools, written to the database by the next recorder (or a repair).

A row the database refuses for good is set aside in the folder's db_quarantine.msgpack and
the rest goes on (quarantine.py): one bad row never holds up a spool. The runs whose rows
these were are ended afterwards by repair.py, from their rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

from encoders.shared.spool import Spool, SpoolLocked
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable

from .quarantine import Quarantine, write_isolating
from .runlock import RunLock
from .writer import SPOOL_NAME, decode_spooled

log = logging.getLogger(__name__)


def replay_spool(db: Database, path: Path, *, batch_rows: int = 500) -> int:
    """Write the rows of one spool left behind, deleting it once all are in; how many were replayed.

    SpoolLocked when a live process holds it; DatabaseUnavailable or DatabaseRefused (the rest
    kept for later) when the database cannot take them.
    """
    spool = Spool(path)
    quarantine = Quarantine(path.parent)
    total = 0
    try:
        while spool.pending:
            records, end = spool.read_batch(batch_rows)
            rows = decode_spooled(records, path, quarantine)
            if rows and db.dim is None:
                db.ensure_frames(int(rows[0].embedding.size))
            write_isolating(db.write_rows, rows, quarantine)
            spool.commit(end, len(records))
            total += len(records)
    finally:
        spool.close()
    if quarantine.count:
        log.warning("%s: %d rows the database refused are kept in %s", path, quarantine.count, quarantine.path)
    return total


def replay_left_spools(db: Database, runs_dir: str | Path, *, batch_rows: int = 500) -> int:
    """Write rows that earlier recorders spooled but could not write before they exited.

    Looks in every run folder under ``runs_dir``; a folder a live recorder holds (its lock,
    or its spool's) is left alone. Returns the number of rows replayed.
    """
    total = 0
    for path in sorted(Path(runs_dir).glob(f"*/{SPOOL_NAME}")):
        lock = RunLock.take(path.parent)
        if lock is None:
            continue
        try:
            total += replay_spool(db, path, batch_rows=batch_rows)
            log.info("replayed %s, left by an earlier run: spool deleted", path)
        except SpoolLocked:
            continue
        except (DatabaseUnavailable, DatabaseRefused) as exc:
            log.warning("could not replay %s (kept for later): %s", path, exc)
        finally:
            lock.release()
    return total
