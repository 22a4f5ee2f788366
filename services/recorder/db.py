"""PostgreSQL + pgvector: the run rows, and every embedded frame written in batches.

``Database`` is the connection and its statements. ``FrameWriter`` batches rows (by
count or age), writes each batch with one binary COPY, and when the database is away
keeps the rows in the run's spool file and replays them, oldest first, once it is back.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from encoders.services.recorder.config import DB_MAX_WAITING_BATCHES

from . import schema
from .rows import (
    COLUMNS,
    COPY_TYPES,
    SCENE_CHANGE_COLUMNS,
    FrameRow,
    copy_values,
    from_spool,
    scene_change_values,
    to_spool,
)
from .spool import SPOOL_NAME, Spool, SpoolLocked

log = logging.getLogger(__name__)

_COLS = ", ".join(COLUMNS)
COPY_FRAMES = f"COPY frames ({_COLS}) FROM STDIN WITH (FORMAT BINARY)"
COPY_STAGING = f"COPY frames_staging ({_COLS}) FROM STDIN WITH (FORMAT BINARY)"
MOVE_STAGED = f"INSERT INTO frames ({_COLS}) SELECT {_COLS} FROM frames_staging ON CONFLICT DO NOTHING RETURNING stream"
INSERT_SCENE_CHANGE = (
    f"INSERT INTO scene_changes ({', '.join(SCENE_CHANGE_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(SCENE_CHANGE_COLUMNS))}) ON CONFLICT DO NOTHING"
)
RUN_FIELDS = ("config", "model", "dim", "ended_at", "summary")
# How long a batch waits for a lock on frames (someone's VACUUM FULL, a REINDEX without
# CONCURRENTLY, an open transaction that locked the table) before it counts as an outage:
# the rows go to the spool and are retried with backoff, instead of the write hanging and
# the receive loop with it once the rows waiting in memory reach their bound.
WRITE_LOCK_TIMEOUT_S = 5.0


class DatabaseUnavailable(RuntimeError):
    """The server cannot be reached now; worth trying again later."""


class DatabaseRefused(RuntimeError):
    """The database refuses what this run writes (a frames table for another embedding size,
    a constraint); trying again will not help."""


def describe_target(url: str) -> str:
    """'host=db port=5432 database=encoders user=me' for messages: never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:  # its message quotes the whole URL, password included
        return "an unparsable database URL (not shown: it may hold a password)"
    return (
        f"host={info.get('host') or 'localhost'} port={info.get('port') or 5432} "
        f"database={info.get('dbname') or info.get('user') or '(default)'} user={info.get('user') or '(default)'}"
    )


def _password(url: str) -> str:
    try:
        return conninfo_to_dict(url).get("password") or ""
    except psycopg.Error:
        return ""


class Database:
    def __init__(self, url: str, *, connect_timeout: float = 2.0):
        self.url = url
        self.target = describe_target(url)
        self.connect_timeout = connect_timeout
        self.lock_timeout_s = WRITE_LOCK_TIMEOUT_S
        self.dim: int | None = None
        self._conn: psycopg.Connection | None = None
        self._schema_ready = False

    @classmethod
    def open(cls, url: str, *, wait_s: float = 10.0) -> Database:
        """Connect (trying for up to ``wait_s``) and create the base schema, or DatabaseUnavailable."""
        # Short attempts, repeated: a reconnect during the run must not stall the receive loop long.
        db = cls(url)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                db.ensure_schema()
                return db
            except DatabaseUnavailable as exc:
                if time.monotonic() + 0.5 >= deadline:
                    raise DatabaseUnavailable(
                        f"PostgreSQL is not reachable (tried for {wait_s:g} s) at {exc}"
                    ) from None
                time.sleep(0.5)

    # -- connection ----------------------------------------------------------------
    def _unavailable(self, exc: Exception) -> DatabaseUnavailable:
        self.close()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        pw = _password(self.url)
        if pw:
            text = text.replace(pw, "***")
        err = DatabaseUnavailable(f"{self.target}: {text}")
        err.__cause__ = None
        return err

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, int(self.connect_timeout)))
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        except psycopg.ProgrammingError:
            raise DatabaseRefused(self.target) from None
        self._conn = conn
        try:
            if self._schema_ready:
                register_vector(conn)
            if self.dim is not None:
                conn.execute(schema.STAGING_TABLE)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None
        return conn

    def _run(self, fn):
        """Run ``fn(conn)``: a lost connection becomes DatabaseUnavailable (and is dropped),
        any other refusal DatabaseRefused."""
        conn = self._connection()
        try:
            return fn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None
        except psycopg.Error as exc:
            raise DatabaseRefused(f"{self.target} refused a write: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection may complain; it is gone either way
                pass
            self._conn = None

    # -- schema --------------------------------------------------------------------
    def ensure_schema(self) -> list[int]:
        """Apply the migrations this database has not had yet; returns their versions."""

        def apply(conn):
            applied = []
            for migration in schema.MIGRATIONS:
                # One transaction each, under the lock: a failing migration leaves the ones before it applied.
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema.ADVISORY_LOCK_KEY,))
                    for step in schema.BOOTSTRAP:
                        conn.execute(step)
                    done = {v for (v,) in conn.execute("SELECT version FROM schema_version")}
                    if max(done, default=0) > schema.LATEST_VERSION:
                        raise DatabaseRefused(
                            f"the database {self.target} has schema version {max(done)}, newer than this "
                            f"program's {schema.LATEST_VERSION}: upgrade encoders"
                        )
                    if migration.version in done:
                        continue
                    frames_exists = conn.execute("SELECT to_regclass('frames') IS NOT NULL").fetchone()[0]
                    for step in migration.statements + (migration.frames_statements if frames_exists else ()):
                        conn.execute(step)
                    conn.execute(
                        "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                        (migration.version, migration.description),
                    )
                    applied.append(migration.version)
                    log.info("database schema: applied migration %d (%s)", migration.version, migration.description)
            register_vector(conn)
            return applied

        applied = self._run(apply)
        self._schema_ready = True
        return applied

    def schema_versions(self) -> list[tuple[int, str | None, datetime]]:
        """(version, description, applied_at) of every migration applied, oldest first."""
        return self._run(
            lambda conn: conn.execute(
                "SELECT version, description, applied_at FROM schema_version ORDER BY version"
            ).fetchall()
        )

    def ensure_frames(self, dim: int) -> None:
        """Create frames for D-dimensional embeddings, or check the existing one has that D."""

        def apply(conn):
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema.ADVISORY_LOCK_KEY,))
                row = conn.execute(schema.FRAMES_EMBEDDING_TYPE).fetchone()
                if row is not None and row[0] != f"vector({dim})":
                    raise DatabaseRefused(
                        f"table frames in {self.target} stores embeddings of type {row[0]}, but this model "
                        f"gives vector({dim}); record this model into another database"
                    )
                if row is not None:
                    return  # the migrations keep an existing table up to date
                for step in schema.frames_steps(dim):
                    conn.execute(step)
                if dim > schema.HNSW_MAX_DIM:
                    log.warning(
                        "embeddings of %d dimensions are stored without an HNSW index (pgvector's limit is %d)",
                        dim,
                        schema.HNSW_MAX_DIM,
                    )

        self._run(apply)
        self._run(lambda conn: conn.execute(schema.STAGING_TABLE))
        self.dim = dim

    # -- runs ----------------------------------------------------------------------
    def claim_run(self, name: str, started_at: datetime) -> int | None:
        """Insert the run row; None when the name is taken already."""
        row = self._run(
            lambda conn: conn.execute(
                "INSERT INTO runs (name, started_at) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, started_at),
            ).fetchone()
        )
        return None if row is None else int(row[0])

    def update_run(self, run_id: int, **fields: Any) -> None:
        unknown = set(fields) - set(RUN_FIELDS)
        if unknown:
            raise ValueError(f"not a runs column: {', '.join(sorted(unknown))}")
        if not fields:
            return
        sets = ", ".join(f"{k} = %s" for k in fields)
        values = [Jsonb(v) if k in ("config", "summary") else v for k, v in fields.items()]
        self._run(lambda conn: conn.execute(f"UPDATE runs SET {sets} WHERE id = %s", (*values, run_id)))

    def end_run_if_open(self, run_id: int, ended_at: Any, summary: dict) -> None:
        self._run(
            lambda conn: conn.execute(
                "UPDATE runs SET ended_at = %s, summary = %s WHERE id = %s AND ended_at IS NULL",
                (ended_at, Jsonb(summary), run_id),
            )
        )

    # -- frames --------------------------------------------------------------------
    def write_rows(self, rows: list[FrameRow]) -> Counter:
        """Copy rows in one transaction; returns the rows actually inserted, per stream."""
        if self.dim is None:
            raise RuntimeError("ensure_frames(dim) before write_rows")

        events = [scene_change_values(row) for row in rows if row.scene_change]

        def copy_rows(cur, statement: str) -> None:
            with cur.copy(statement) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows:
                    copy.write_row(copy_values(row))

        lock_timeout = f"SET LOCAL lock_timeout = {int(self.lock_timeout_s * 1000)}"

        def write(conn):
            # Straight into frames: the recorder never sends a frame twice, so this is the usual case,
            # and a fifth faster than going through the staging table.
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(lock_timeout)
                    copy_rows(cur, COPY_FRAMES)
                    if events:
                        cur.executemany(INSERT_SCENE_CHANGE, events)
                    return Counter(row.stream for row in rows)
            except psycopg.errors.UniqueViolation:
                pass  # some rows are stored already (a replay after an outage): keep only the others
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(lock_timeout)
                copy_rows(cur, COPY_STAGING)
                cur.execute(MOVE_STAGED)
                inserted = Counter(stream for (stream,) in cur.fetchall())
                if events:
                    cur.executemany(INSERT_SCENE_CHANGE, events)
                return inserted

        return self._run(write)


class FrameWriter:
    """Rows in, database batches out; nothing lost while the database is away.

    Rows wait in memory until ``batch_rows`` of them are waiting or the oldest is
    ``flush_s`` old. A batch the database does not take goes to the spool; while the
    spool holds anything, new rows queue behind it there (order kept), and the spool is
    replayed with exponential backoff between attempts.

    One batch at a time is written on a thread of its own while the caller goes on
    receiving (psycopg waits for the server without holding the GIL, and the server's work
    per batch is as long as the recorder's own). Its outcome is taken before the next batch
    goes out, so batches reach the database, or the spool, in order.

    While a batch is being written, rows go on gathering, past ``batch_rows``, and go out
    together as the next batch once it is done (group commit): when the server is the
    slower side the batches grow and the receive loop never waits for it, until
    ``max_waiting_batches`` batches' worth of rows are held.
    """

    REPLAY_BATCHES_PER_CALL = 20  # bounds how long one replay holds up the receive loop

    def __init__(
        self,
        db: Database,
        spool: Spool,
        *,
        run_id: int,
        batch_rows: int = 500,
        flush_s: float = 0.5,
        retry_max: float = 10.0,
        clock=time.monotonic,
        background: bool = True,
        max_waiting_batches: int = DB_MAX_WAITING_BATCHES,
    ):
        self.db, self.spool, self.run_id = db, spool, run_id
        self.max_pending = batch_rows * max_waiting_batches
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="db-writer") if background else None
        self._inflight: tuple[Future, list[FrameRow]] | None = None
        self.batch_rows, self.flush_s, self.retry_max = batch_rows, flush_s, retry_max
        self.clock = clock
        self.pending: list[FrameRow] = []
        self._oldest: float | None = None
        self.written: Counter = Counter()  # rows inserted, per stream
        self.model: tuple[str, int] | None = None
        self._model_stored = False
        self.backoff = 0.0
        self.retry_at = 0.0
        self.outages = 0
        self.commits = 0  # batches written (spool replays included)
        self.fatal: DatabaseRefused | None = None

    @property
    def spooled(self) -> int:
        """Rows in the spool, not yet in the database."""
        return self.spool.appended - self.spool.committed

    def set_model(self, model: str, dim: int) -> None:
        """The run's model; frames is created for its D before the first row is written."""
        self.model = (model, dim)

    def add(self, row: FrameRow) -> None:
        self.pending.append(row)
        if self._oldest is None:
            self._oldest = self.clock()
        if len(self.pending) >= self.batch_rows and (self._writer_free() or len(self.pending) >= self.max_pending):
            self.flush()

    def tick(self) -> None:
        self._collect(block=False)
        now = self.clock()
        if (
            self.pending
            and self._inflight is None
            and (len(self.pending) >= self.batch_rows or now - self._oldest >= self.flush_s)
        ) or (self.spool.pending and now >= self.retry_at and self.fatal is None):
            self.flush()

    def _writer_free(self) -> bool:
        """No batch being written any more (its outcome taken, if it had one)."""
        self._collect(block=False)
        return self._inflight is None

    def flush(self, *, retry_now: bool = False) -> None:
        rows, self.pending, self._oldest = self.pending, [], None
        self._collect(block=True)  # the batch before this one first: its rows may belong in the spool
        if self.spool.pending or self.fatal is not None:
            self._to_spool(rows)
            if self.fatal is None and (retry_now or self.clock() >= self.retry_at):
                self._replay()
            return
        if not rows:
            return
        if self._pool is not None:
            self._inflight = (self._pool.submit(self._write, rows), rows)
            return
        self._settle(rows, lambda: self._write(rows))

    def _collect(self, *, block: bool) -> None:
        """Take the outcome of the batch being written (waiting for it if ``block``)."""
        if self._inflight is None or not (block or self._inflight[0].done()):
            return
        future, rows = self._inflight
        self._inflight = None
        self._settle(rows, future.result)

    def _settle(self, rows: list[FrameRow], write) -> None:
        """Count a batch as written, or keep it in the spool whatever went wrong."""
        try:
            self.written.update(write())
            self.commits += 1
        except DatabaseUnavailable as exc:
            self._outage(exc)
            self._to_spool(rows)
        except DatabaseRefused as exc:
            self._fail(exc)
            self._to_spool(rows)
        except Exception:
            self._to_spool(rows)
            raise

    def close(self, wait_s: float) -> bool:
        """Write everything held, trying for up to ``wait_s`` while the database is away.

        True when every row is in the database; False leaves the rest in the spool file.
        """
        deadline = self.clock() + wait_s
        self.flush(retry_now=True)
        self._collect(block=True)
        while self.spool.pending and self.fatal is None and self.clock() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - self.clock())))
            self.flush(retry_now=True)
        done = not self.spool.pending
        self.spool.close()
        if self._pool is not None:
            self._pool.shutdown()
        return done

    # -- internals -----------------------------------------------------------------
    def _write(self, rows: list[FrameRow]) -> Counter:
        """Write one batch; the rows inserted, per stream."""
        if self.model is not None and not self._model_stored:
            model, dim = self.model
            self.db.ensure_frames(dim)
            self.db.update_run(self.run_id, model=model, dim=dim)
            self._model_stored = True
        elif self.db.dim is None and rows:
            self.db.ensure_frames(int(rows[0].embedding.size))
        return self.db.write_rows(rows) if rows else Counter()

    def _to_spool(self, rows: Iterable[FrameRow]) -> None:
        self.spool.append(to_spool(r) for r in rows)

    def _replay(self) -> None:
        replayed = 0
        try:
            for _ in range(self.REPLAY_BATCHES_PER_CALL):
                if not self.spool.pending:
                    break
                records, end = self.spool.read_batch(self.batch_rows)
                rows = _decode_spooled(records, self.spool.path)
                self.written.update(self._write(rows))
                self.commits += 1
                self.spool.commit(end, len(records))
                replayed += len(records)
        except DatabaseUnavailable as exc:
            self._outage(exc)
            return
        except DatabaseRefused as exc:
            self._fail(exc)
            return
        self.retry_at = self.clock()  # more may follow on the next tick, without waiting
        if self.backoff and not self.spool.pending:
            log.info("database is back: replayed the spooled rows, spool deleted")
            self.backoff = 0.0
        elif replayed:
            log.info("database is back: replayed %d spooled rows, %d to go", replayed, self.spooled)

    def _outage(self, exc: DatabaseUnavailable) -> None:
        first = self.backoff == 0.0
        self.backoff = min(self.retry_max, max(0.5, self.backoff * 2))
        self.retry_at = self.clock() + self.backoff
        if first:
            self.outages += 1
            log.warning("database unavailable (%s); keeping rows in %s, retrying with backoff", exc, self.spool.path)
        else:
            log.info("database still unavailable; next try in %.1f s (%d rows spooled)", self.backoff, self.spooled)

    def _fail(self, exc: DatabaseRefused) -> None:
        if self.fatal is None:
            log.error("%s", exc)
        self.fatal = exc


def _decode_spooled(records: list, path: Path) -> list[FrameRow]:
    rows = []
    for record in records:
        try:
            rows.append(from_spool(record))
        except ValueError as exc:
            log.error("%s: skipped an unreadable spooled row: %s", path, exc)
    return rows


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
                rows = _decode_spooled(records, path)
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
