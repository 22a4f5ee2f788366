"""`encoders db migrate`: bring a database's schema to this version (what a recorder does at start)."""

from __future__ import annotations

import sys

from encoders.shared.storage.config import DatabaseConfig

from . import embedded_db, schema
from .db import Database, DatabaseRefused, DatabaseUnavailable


def run(cfg: DatabaseConfig) -> int:
    try:
        url, _server = embedded_db.database_url(cfg.database_url, cfg.runs_dir)
        db = Database(url)
        try:
            applied = db.ensure_schema()
            versions = db.schema_versions()
        finally:
            db.close()
    except (DatabaseUnavailable, DatabaseRefused, RuntimeError, OSError) as exc:
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
