"""What a command before left in the runs folder, and what this one leaves there (issue #22).

The all-in-one's core keeps its state in ``<runs-dir>/.core`` (wiring.core_state_dir): its
frame numbers, and the records no recorder acknowledged by the end of the drain. At start,
the folder must be free (another command recording into the same runs folder holds it) and
what a command before left in it is stored into its run first (services/recorder/
left_records.py). At the end, records left there are said, with the path and what stores
them. A runs folder that cannot be used is said in one line naming the cause.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping
from pathlib import Path

from encoders.shared.core_state import RECORDS_SPOOL, StateDir
from encoders.shared.disks import disk_problem, full_disk
from encoders.shared.runtime import StartupError
from encoders.shared.storage.errors import DatabaseUnavailable

from .config import AllInOneConfig

log = logging.getLogger("encoders.run")


def take_up_state(cfg: AllInOneConfig, environ: Mapping[str, str], database_url: str, state_dir: Path) -> int:
    """The core's state folder for this command (2 if another command's core holds it), with the
    records a command before left in it stored into their run first."""
    try:
        StateDir(state_dir).close()
    except StartupError as exc:
        log.error("cannot start: %s: is another encoders command recording into %s? Give this one its own --runs-dir",
                  exc, cfg.runs_dir)  # fmt: skip
        return 2
    if not (state_dir / RECORDS_SPOOL).exists():
        return 0
    from encoders.services.recorder.config import RecorderConfig
    from encoders.services.recorder.left_records import store_left_records
    from encoders.shared.storage.connection import Database
    from encoders.shared.storage.errors import DatabaseRefused

    settings = RecorderConfig.from_env(environ, runs_dir=cfg.runs_dir, database_url=database_url)
    try:
        db = Database.open(database_url, wait_s=settings.db_connect_timeout)
        try:
            said = store_left_records(settings, db, state_dir)
        finally:
            db.close()
    except (DatabaseUnavailable, DatabaseRefused, OSError) as exc:
        log.warning("the records a command before left in %s wait for the next start (or `encoders runs repair`): %s",
                    state_dir / RECORDS_SPOOL, exc)  # fmt: skip
        return 0
    if said:
        log.info("%s", said)
    return 0


def cannot_start(exc: BaseException, runs_dir: str) -> str:
    """Why the embedded database (or the runs folder) cannot be had, in one line naming the cause."""
    if isinstance(exc, subprocess.CalledProcessError):  # pgserver's initdb or pg_ctl
        tool = Path(str(exc.cmd[0] if isinstance(exc.cmd, list | tuple) else exc.cmd)).name
        pgdata = Path(runs_dir) / ".pgdata"
        said = f"the embedded database in {pgdata} could not be set up ({tool}: exit {exc.returncode})"
    elif isinstance(exc, OSError):
        return disk_problem(exc, runs_dir)
    else:
        said = str(exc)
    full = full_disk(runs_dir)
    return f"{said}; {full}" if full else said


def left_behind(cfg: AllInOneConfig, state_dir: Path) -> int:
    """1, said where and what stores them, if records were left undelivered in the core's spool."""
    spool = state_dir / RECORDS_SPOOL
    if not cfg.save or not spool.exists():
        return 0
    log.error(
        "records the recorder did not acknowledge are kept in %s: the next start with --runs-dir %s stores them "
        "into their run, or `encoders runs repair --runs-dir %s` does now",
        spool,
        cfg.runs_dir,
        cfg.runs_dir,
    )
    return 1
