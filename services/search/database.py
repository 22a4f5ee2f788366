"""`encoders db migrate` and `encoders db serve`: the database itself, for whoever looks after it."""

from __future__ import annotations

import logging
import sys

from encoders.shared.runtime import setup_logging, stop_on_signals
from encoders.shared.storage import embedded, schema
from encoders.shared.storage.config import DatabaseConfig
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


def serve(cfg: DatabaseConfig) -> int:
    """Keep the embedded database up until Ctrl+C or SIGTERM, and say how to reach it."""
    setup_logging("db")
    logging.getLogger("encoders.shared.storage.embedded").setLevel(logging.WARNING)  # the URL is printed below
    stop = stop_on_signals()
    try:
        with embedded.database("", cfg.runs_dir) as url:
            print(f'embedded PostgreSQL for {cfg.runs_dir}: {url}\n  psql "{url}"\nCtrl+C stops it.', flush=True)
            stop.wait()
    except (embedded.NoDatabase, DatabaseUnavailable, OSError) as exc:
        print(f"encoders db serve: {exc}", file=sys.stderr)
        return 2
    return 0
