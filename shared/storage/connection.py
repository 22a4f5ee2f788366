"""Connecting to PostgreSQL: one ``connect()`` for everyone, and ``Database``, the recorder's session.

``connect`` sets libpq's TCP keepalives and ``tcp_user_timeout``: without them a connection
to a remote server that dies silently (a cable pulled, a NAT that forgot the flow, a host
that froze) is noticed only when the kernel gives up, after minutes of retransmissions,
and a write waits that long. With them it fails within about ten seconds and the caller's
own handling (the recorder's spool and replay) takes over. libpq ignores both for a Unix
socket, which is how the embedded server is reached.

It also sets a statement timeout (``statement_timeout``, the server's: a statement that
waits for a lock someone holds, or runs on and on, is cancelled and fails) when asked: the
recorder's (ENCODERS_DB_STATEMENT_TIMEOUT) and the readers' (``READ_STATEMENT_TIMEOUT_S``:
searches, listings, the web viewer). Schema migrations lift it (schema.py): building an index
over the rows already stored takes as long as it takes. (A pooler that refuses libpq's
``options`` at connection, as PgBouncer does, needs the timeout off: 0.)

A server that does not answer at all (stopped, frozen, over a Unix socket where keepalives do
not apply) cancels nothing: ``Database.abort`` cuts the connection from another thread, so that
a write waiting on it fails now (the recorder's writer does, past its bound: writer.py).

``Database`` is one long-lived connection that reconnects when it has to, and turns every
error into DatabaseUnavailable (try again later) or DatabaseRefused (it will not help).
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from pgvector.psycopg import register_vector
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import frames, runs, schema
from .errors import DatabaseRefused, DatabaseUnavailable, describe_target, one_line

T = TypeVar("T")

# libpq's connection parameters: TCP keepalives on, the first probe after 5 idle seconds, one
# every 2 s after that, and 3 lost probes make the connection dead (about 11 s when idle);
# sent data unacknowledged for 10 s does too (tcp_user_timeout, in ms).
LIVENESS = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
# How long a batch waits for a lock on frames (someone's VACUUM FULL, a REINDEX without
# CONCURRENTLY, an open transaction that locked the table) before it counts as an outage:
# the rows go to the spool and are retried with backoff, instead of the write hanging and
# the receive loop with it once the rows waiting in memory reach their bound.
WRITE_LOCK_TIMEOUT_S = 5.0
# The statement timeout of readers (search, events, runs, the web viewer): a search that waits on a
# table someone locked, or runs far longer than any search should, fails instead of hanging.
READ_STATEMENT_TIMEOUT_S = 60.0


def connect(
    url: str, *, connect_timeout: float = 5.0, statement_timeout: float = 0.0, vectors: bool = True
) -> psycopg.Connection:
    """An autocommit connection (transactions are explicit), with vectors as numpy arrays if the
    database has pgvector. DatabaseUnavailable when the server cannot be reached.

    ``statement_timeout``: seconds any one statement may run before the server cancels it (0: the
    server's own setting); options the URL (or PGOPTIONS) gives come after, so theirs win."""
    try:
        extra: dict[str, str] = {}
        if statement_timeout > 0:
            given = conninfo_to_dict(url).get("options") or os.environ.get("PGOPTIONS", "")
            extra["options"] = f"-c statement_timeout={max(1, round(statement_timeout * 1000))} {given}".strip()
        conninfo = make_conninfo(url, connect_timeout=str(max(2, int(connect_timeout))), **LIVENESS, **extra)
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"{describe_target(url)}: {one_line(exc, url)}") from None
    except psycopg.ProgrammingError as exc:  # e.g. an unknown option in the URL
        raise DatabaseRefused(f"{describe_target(url)}: {one_line(exc, url)}") from None
    if vectors:
        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            pass  # no pgvector yet: a recorder's first migration creates the extension
    return conn


class Database:
    """The recorder's connection: reconnected when lost; every call one short operation."""

    def __init__(self, url: str, *, connect_timeout: float = 2.0, statement_timeout: float = 0.0):
        self.url = url
        self.target = describe_target(url)
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout  # seconds (0: the server's); migrations lift it
        self.lock_timeout_s = WRITE_LOCK_TIMEOUT_S
        self.dim: int | None = None  # of frames' embeddings, once known
        self._conn: psycopg.Connection | None = None
        # The connection's socket, duplicated: what ``abort`` shuts down from another thread (a
        # descriptor of our own, so it can never be another file's once the connection is closed).
        self._cutter: socket.socket | None = None
        self._cut = False  # aborted: the connection is not used again

    @classmethod
    def open(cls, url: str, *, wait_s: float = 10.0, statement_timeout: float = 0.0) -> Database:
        """Connect (trying for up to ``wait_s``) and bring the schema up to date, or DatabaseUnavailable."""
        # Short attempts, repeated: a reconnect during the run must not stall the receive loop long.
        db = cls(url, statement_timeout=statement_timeout)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                db.migrate()
                return db
            except DatabaseUnavailable as exc:
                if time.monotonic() + 0.5 >= deadline:
                    raise DatabaseUnavailable(f"PostgreSQL not reachable (tried for {wait_s:g} s) at {exc}") from None
                time.sleep(0.5)

    # -- what the recorder does ------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet; returns their versions."""

        def apply(conn: psycopg.Connection) -> list[int]:
            applied = schema.migrate(conn, self.target)
            register_vector(conn)  # the first migration may have just created the extension
            return applied

        return self.run(apply)

    def schema_versions(self) -> list[tuple[int, str | None, datetime]]:
        return self.run(schema.versions)

    def ensure_frames(self, dim: int) -> None:
        self.run(lambda conn: schema.ensure_frames(conn, dim, self.target))
        self.dim = dim

    def claim_run(self, name: str, started_at: datetime) -> int | None:
        return self.run(lambda conn: runs.claim(conn, name, started_at))

    def update_run(self, run_id: int, **fields: Any) -> None:
        self.run(lambda conn: runs.update(conn, run_id, **fields))

    def end_run_if_open(self, run_id: int, ended_at: Any, summary: dict) -> None:
        self.run(lambda conn: runs.end_if_open(conn, run_id, ended_at, summary))

    def run_row(self, name: str) -> runs.RunRow | None:
        return self.run(lambda conn: runs.row_of(conn, name))

    def open_runs(self) -> list[runs.RunRow]:
        return self.run(runs.open_runs)

    def stored_streams(self, run_id: int) -> dict[str, runs.StoredStream]:
        return self.run(lambda conn: runs.stored_streams(conn, run_id))

    def each_stored_row(self, run_id: int, stream: str, take: Callable[[list[frames.StoredRow]], None]) -> int:
        """A stream's rows in seq order, a batch at a time, handed to ``take``; how many."""
        return self.run(lambda conn: frames.each_stored_row(conn, run_id, stream, take))

    def write_events(self, events: list[tuple]) -> None:
        """Rows of the events table that belong to no frame row (a stream that went down)."""
        self.run(lambda conn: conn.cursor().executemany(frames.INSERT_EVENT, events))

    def write_rows(self, rows: list[frames.FrameRow]) -> Counter:
        """Copy rows in one transaction; returns the rows actually inserted, per stream."""
        if self.dim is None:
            raise RuntimeError("ensure_frames(dim) before write_rows")
        return self.run(lambda conn: frames.write_frames(conn, rows, lock_timeout_s=self.lock_timeout_s))

    # -- the connection ---------------------------------------------------------------------
    def run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """``fn(conn)``: a lost connection becomes DatabaseUnavailable (and is dropped), any other
        refusal DatabaseRefused."""
        conn = self._connection()
        try:
            return fn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None
        except psycopg.Error as exc:
            raise DatabaseRefused(f"{self.target} refused a write: {one_line(exc, self.url)}") from exc

    def abort(self) -> bool:
        """Cut the connection now, from any thread: whatever waits on it (a write to a server that
        does not answer) fails at once with DatabaseUnavailable, and the next call connects again.
        False if there was no connection to cut."""
        cutter = self._cutter
        if cutter is None:
            return False
        self._cut = True
        try:
            cutter.shutdown(socket.SHUT_RDWR)  # the connection's socket too: they are one
        except OSError:
            return False  # closed meanwhile
        return True

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection may complain; it is gone either way
                pass
            self._conn = None
        cutter, self._cutter = self._cutter, None
        if cutter is not None:
            cutter.close()

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.broken and not self._cut:
            return self._conn
        self.close()
        self._cut = False
        conn = connect(self.url, connect_timeout=self.connect_timeout, statement_timeout=self.statement_timeout)
        self._conn = conn
        try:
            self._cutter = socket.socket(fileno=os.dup(conn.fileno()))
        except OSError:
            self._cutter = None  # then it cannot be cut: a write waits for the server's own timeouts
        try:
            if self.dim is not None:
                conn.execute(schema.STAGING_TABLE)  # temporary: one per connection
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None
        return conn

    def _unavailable(self, exc: Exception) -> DatabaseUnavailable:
        self.close()
        return DatabaseUnavailable(f"{self.target}: {one_line(exc, self.url)}")
