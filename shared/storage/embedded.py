"""Which PostgreSQL to use: the one configured, or an embedded server under the runs folder.

With no database URL, the recorder (and the all-in-one launcher, search, and the tests)
start or reuse a private PostgreSQL with pgvector from the ``pgserver`` package: nothing
to install, data kept in ``<runs_dir>/.pgdata`` between runs, reached over a Unix socket.

``database(url, runs_dir)`` is a context manager: inside it the URL is usable; on leaving
it this process stops using the embedded server, which stops once no process uses it
(pgserver counts them), so a run's launcher and its recorder share one server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from encoders.shared.settings import mask_url

from .errors import DatabaseUnavailable, one_line

log = logging.getLogger(__name__)

PGDATA_NAME = ".pgdata"


class NoDatabase(RuntimeError):
    """No URL was given and no embedded database can be used here; the message says what to do."""


@contextmanager
def database(url: str, runs_dir: str, *, create: bool = True) -> Iterator[str]:
    """The URL to connect to, for as long as the block runs.

    ``url`` when one is configured; else the embedded server of ``runs_dir``, started if
    needed. ``create=False`` (readers: search, runs, events) refuses to start a new, empty
    database where nothing was recorded.
    """
    if url:
        log.info("database: %s", mask_url(url))
        yield url
        return
    server = _embedded_server(runs_dir, create=create)
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _embedded_server(runs_dir: str, *, create: bool):
    try:
        import pgserver
    except ImportError:
        raise NoDatabase(
            "no --database-url / ENCODERS_DATABASE_URL given, and the embedded database needs the pgserver "
            "package: pip install 'encoders[embedded-db]'"
        ) from None
    import psycopg

    pgdata = Path(runs_dir).resolve() / PGDATA_NAME
    if not create and not (pgdata / "PG_VERSION").is_file():
        raise NoDatabase(
            f"no database: nothing was recorded with --runs-dir {runs_dir} ({pgdata} does not exist); give the "
            "--runs-dir the recording used, or --database-url / ENCODERS_DATABASE_URL"
        )
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # 'stop': the server stops when the last process using it has let go of it.
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    uri = server.get_uri()
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        server.cleanup()
        raise DatabaseUnavailable(f"the embedded database in {pgdata}: {one_line(exc, uri)}") from None
    log.info("database: embedded PostgreSQL in %s (%s)", pgdata, mask_url(uri))
    return server
