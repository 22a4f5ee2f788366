"""`encoders db migrate`, `encoders db serve` and `encoders runs repair`: the database itself, for whoever looks
after it."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from encoders.services.recorder.config import RetentionConfig
from encoders.shared.masking import mask
from encoders.shared.runtime import setup_logging, stop_on_signals
from encoders.shared.storage import embedded, schema
from encoders.shared.storage.config import DatabaseConfig, ServeConfig
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable


def migrate(cfg: DatabaseConfig) -> int:
    """Bring the schema up to date (a recorder does this at start). 2 when the database cannot be reached."""
    try:
        with embedded.database(cfg.database_url, cfg.runs_dir) as url:
            db = Database(url)
            try:
                applied = db.migrate()
                versions = db.schema_versions()
            finally:
                db.close()
    except (embedded.NoDatabase, DatabaseUnavailable, DatabaseRefused, OSError) as exc:
        print(f"encoders db migrate: {exc}", file=sys.stderr)
        return 2
    for version, description, _at in versions:
        if version in applied:
            print(f"applied migration {version}: {description}")
    latest = max((v for v, _, _ in versions), default=0)
    if not applied:
        print(f"the schema is up to date (version {latest})")
    else:
        print(f"the schema is at version {latest} ({db.target})")
    if latest != schema.LATEST_VERSION:  # cannot happen unless someone edits schema_version by hand
        print(f"unexpected: this program's latest migration is {schema.LATEST_VERSION}", file=sys.stderr)
        return 1
    return 0


def serve(cfg: ServeConfig) -> int:
    """Keep the embedded database up until Ctrl+C or SIGTERM, and say how to reach it (``listen``:
    also over TCP, with a password, for other machines)."""
    setup_logging("db")
    logging.getLogger("encoders.shared.storage.embedded").setLevel(logging.WARNING)  # the URL is printed below
    stop = stop_on_signals()
    try:
        if cfg.db_listen:
            host, _, port = cfg.db_listen.rpartition(":")
            if not port.isdigit() or not 0 < int(port) < 65536:
                print(f"encoders db serve: --db-listen {cfg.db_listen!r} is not HOST:PORT", file=sys.stderr)
                return 2
            password = cfg.db_password or secrets.token_urlsafe(18)
            with embedded.served(cfg.runs_dir, host or "0.0.0.0", int(port), password) as url:
                shown = mask(url, password=cfg.db_password)  # a given one is not echoed; a new one is shown
                print(
                    f"embedded PostgreSQL for {cfg.runs_dir}, also on TCP {cfg.db_listen} (password needed):\n"
                    f'  psql "{shown}"\n'
                    "  (from another machine, with this machine's address instead of localhost)\nCtrl+C stops it.",
                    flush=True,
                )
                stop.wait()
        else:
            with embedded.database("", cfg.runs_dir) as url:
                print(f'embedded PostgreSQL for {cfg.runs_dir}: {url}\n  psql "{url}"\nCtrl+C stops it.', flush=True)
                stop.wait()
    except (embedded.NoDatabase, DatabaseUnavailable, OSError) as exc:
        print(f"encoders db serve: {exc}", file=sys.stderr)
        return 2
    return 0


def repair(cfg: DatabaseConfig, *, run: str | None = None, state_dirs: Sequence[str] = ()) -> int:
    """Store the records cores left in their state folders (services/recorder/left_records.py), then
    close the runs left open by a recorder that is gone (services/recorder/repair.py); a line for each.

    0 when done (even with nothing to close), 2 when the database cannot be reached or ``run``
    names no open run.
    """
    from encoders.services.recorder.config import RecorderConfig
    from encoders.services.recorder.left_records import store_left_records
    from encoders.services.recorder.repair import close_open_runs

    setup_logging("repair")
    logging.getLogger("encoders.services.recorder").setLevel(logging.WARNING)  # each run's outcome is printed
    try:
        with embedded.database(cfg.database_url, cfg.runs_dir, create=False) as url:
            db = Database(url)
            try:
                db.migrate()
                settings = RecorderConfig.from_env(runs_dir=cfg.runs_dir, database_url=url)
                for folder in state_dirs or core_state_dirs(cfg.runs_dir):
                    said = store_left_records(settings, db, folder)
                    if said:
                        print(said)
                if run is not None and not any(run in (r.name, str(r.id)) for r in db.open_runs()):
                    ended = db.run_row(run)
                    if ended is not None:
                        print(f"run {ended.name} has ended already: nothing to repair")
                        return 0
                    print(f"encoders runs repair: no open run {run!r} (`encoders runs` lists them)", file=sys.stderr)
                    return 2
                report = close_open_runs(db, cfg.runs_dir, only=run)
            finally:
                db.close()
    except (embedded.NoDatabase, DatabaseUnavailable, DatabaseRefused, OSError) as exc:
        print(f"encoders runs repair: {exc}", file=sys.stderr)
        return 2
    for name, what in report:
        print(f"{name}: {what}")
    if not report:
        print("no run is left open")
    return 0


def core_state_dirs(runs_dir: str) -> list[str]:
    """Where cores on this machine keep their state by default: the all-in-one command's, in the
    runs folder, and a core's own (ENCODERS_STATE_DIR, else its default)."""
    from encoders.launcher.wiring import CORE_STATE
    from encoders.services.metrics.config import default_state_dir

    found = [str(Path(runs_dir) / CORE_STATE), os.environ.get("ENCODERS_STATE_DIR") or default_state_dir()]
    return list(dict.fromkeys(found))


def prune(cfg: RetentionConfig, *, dry_run: bool) -> int:
    """`encoders prune`: the retention policy applied now (services/recorder/retention.py); a line per action.

    0 when done (or nothing to do), 2 when the database cannot be reached or no policy is set.
    """
    from datetime import UTC, datetime

    from encoders.services.recorder import retention

    setup_logging("prune")
    policy = cfg.policy()
    if not policy.active:
        print("encoders prune: no policy: set --retention-days or --retention-gb", file=sys.stderr)
        return 2
    try:
        with embedded.database(cfg.database_url, cfg.runs_dir, create=False) as url:
            db = Database(url)
            try:
                db.migrate()
                lines = retention.prune(db, cfg.runs_dir, policy, datetime.now(UTC), dry_run=dry_run)
            finally:
                db.close()
    except (embedded.NoDatabase, DatabaseUnavailable, DatabaseRefused, OSError) as exc:
        print(f"encoders prune: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    if not lines:
        print(f"nothing to prune ({retention.describe(policy)})")
    if warning := retention.low_disk(cfg.runs_dir):
        print(f"warning: {warning}", file=sys.stderr)
    return 0
