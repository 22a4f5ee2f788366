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
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from encoders.shared.masking import mask

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
        log.info("database: %s", mask(url))
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
    log.info("database: embedded PostgreSQL in %s (%s)", pgdata, mask(uri))
    return server


@contextmanager
def served(runs_dir: str, host: str, port: int, password: str) -> Iterator[str]:
    """The embedded database of ``runs_dir``, also listening on TCP ``host:port`` for clients on
    other machines, for as long as the block runs; yields the URL they connect with.

    TCP connections need ``password`` (the ``postgres`` role's, scram-sha-256: a line ahead of
    initdb's trust lines in pg_hba.conf); the Unix socket stays as it was, for this machine.
    pgserver starts the server with no TCP listener (``-h ""``), so it is restarted here with
    one, which needs this process to be its only user; on leaving, it stops (the next user
    starts it again as pgserver does, on the Unix socket only). The restart goes through
    pgserver's own pg_ctl wrapper (it runs PostgreSQL as its system user when this is root):
    a private part of pgserver, kept to this one function.
    """
    import psycopg
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import, one per program
    from pgserver.utils import PostmasterInfo
    from psycopg import sql

    server = _embedded_server(runs_dir, create=True)
    try:
        others = [pid for pid in server.global_process_id_list.get() if pid != os.getpid()]
        if others:
            raise DatabaseUnavailable(
                f"the embedded database in {server.pgdata} is in use by other processes ({others}): stop them "
                "(a run, a recorder, a search) first, since serving it on TCP restarts it"
            )
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
        _require_passwords_over_tcp(Path(server.pgdata) / "pg_hba.conf")
        socket_dir = server.get_postmaster_info().socket_dir
        options = ["-o", f'-h "{host}"', "-o", f"-p {port}"] + (["-o", f"-k {socket_dir}"] if socket_dir else [])
        pg_ctl(["-w", *options, "-l", str(server.log), "restart"], pgdata=server.pgdata, user=server.system_user)
        server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)  # the restarted one, to stop it
        where = "localhost" if host in ("", "*", "0.0.0.0") else host
        yield f"postgresql://postgres:{password}@{where}:{port}/postgres"
    finally:
        server.cleanup()


HBA_LINE = "host all all all scram-sha-256  # encoders db serve --listen: TCP needs the password"


def _require_passwords_over_tcp(hba: Path) -> None:
    """First match wins in pg_hba.conf: this line ahead of initdb's ``trust`` ones."""
    lines = hba.read_text().splitlines()
    if HBA_LINE not in lines:
        hba.write_text("\n".join([HBA_LINE, *lines]) + "\n")
