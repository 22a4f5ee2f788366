"""Which PostgreSQL to use: the one configured, or an embedded server under the runs folder.

With no database URL, the recorder (and the all-in-one launcher, and the tests) start or
reuse a private PostgreSQL with pgvector from the ``pgserver`` package: nothing to
install, data kept in ``<runs_dir>/.pgdata`` between runs, reached over a Unix socket.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from encoders.shared.settings import mask_url

log = logging.getLogger(__name__)

PGDATA_NAME = ".pgdata"


def database_url(cfg_url: str, runs_dir: str, *, create: bool = True) -> tuple[str, Any]:
    """(URL to connect to, handle). Keep the handle while the database is in use: with
    ``cleanup_mode='stop'`` the embedded server stops when its last user process exits.
    The handle is None for a configured URL. ``create=False`` (readers: search, runs,
    events) refuses to start a new, empty database where none was recorded."""
    if cfg_url:
        log.info("database: %s", mask_url(cfg_url))
        return cfg_url, None
    try:
        import pgserver
    except ImportError:
        raise RuntimeError(
            "no --database-url / ENCODERS_DATABASE_URL given, and the embedded database needs the "
            "pgserver package: pip install 'encoders[embedded-db]'"
        ) from None
    import psycopg

    pgdata = Path(runs_dir).resolve() / PGDATA_NAME
    if not create and not (pgdata / "PG_VERSION").is_file():
        raise RuntimeError(
            f"no database: nothing was recorded with --runs-dir {runs_dir} ({pgdata} does not exist); "
            f"give the --runs-dir the recording used, or --database-url / ENCODERS_DATABASE_URL"
        )
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    uri = server.get_uri()
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    log.info("database: embedded PostgreSQL in %s (%s)", pgdata, mask_url(uri))
    return uri, server
