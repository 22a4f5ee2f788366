"""Rows earlier recorders left in their spools, written to the database by the next recorder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable

from .spool import SPOOL_NAME, Spool, SpoolLocked
from .writer import decode_spooled

log = logging.getLogger(__name__)


def replay_left_spools(db: Database, runs_dir: str | Path, *, batch_rows: int = 500) -> int:
    """Write rows that earlier recorders spooled but could not write before they exited.

    Looks in every run folder under ``runs_dir``; a spool in use by a live recorder is
    locked and left alone. Returns the number of rows replayed.
    """
    total = 0
    for path in sorted(Path(runs_dir).glob(f"*/{SPOOL_NAME}")):
        try:
            spool = Spool(path)
        except SpoolLocked:
            continue
        run_ids: set[int] = set()
        try:
            while spool.pending:
                records, end = spool.read_batch(batch_rows)
                rows = decode_spooled(records, path)
                if rows:
                    if db.dim is None:
                        db.ensure_frames(int(rows[0].embedding.size))
                    db.write_rows(rows)
                    run_ids.update(r.run_id for r in rows)
                spool.commit(end, len(records))
                total += len(records)
            log.info("replayed %s, left by an earlier run: spool deleted", path)
            _end_runs_from_summary(db, path.parent, run_ids)
        except (DatabaseUnavailable, DatabaseRefused) as exc:
            log.warning("could not replay %s (kept for later): %s", path, exc)
        finally:
            spool.close()
    return total


def _end_runs_from_summary(db: Database, run_dir: Path, run_ids: set[int]) -> None:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return
    ended = (summary.get("run") or {}).get("ended_at")
    for run_id in run_ids:
        db.end_run_if_open(run_id, ended, summary)
