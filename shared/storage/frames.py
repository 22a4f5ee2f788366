"""The frames table's rows and how a batch of them is written: one binary COPY per batch.

A row is one embedded frame (see schema.py for the table). A batch is written straight
into frames; when some of its rows are stored already (a replay after an outage), it is
copied into a temporary staging table and moved with ON CONFLICT DO NOTHING instead, so a
replayed row is never doubled. Scene changes go into scene_changes in the same transaction.

``each_stored_row`` reads a stream's rows back in seq order, a batch at a time (a recorder
rewrites a run's files from them when it resumes or closes a run).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import psycopg

# The frames table's columns, in the order rows are copied (see schema.py).
COLUMNS = (
    "run_id",
    "stream",
    "seq",
    "captured_at",
    "similarity",
    "drift",
    "embedding",
    "snapshot_path",
    "worker",
    "keyframe",
    "keyframe_seq",
    "thumbnail",
)
# Binary COPY needs every column's type up front.
COPY_TYPES = (
    "int8",
    "text",
    "int8",
    "timestamptz",
    "float4",
    "float4",
    "vector",
    "text",
    "text",
    "bool",
    "int8",
    "bytea",
)
SCENE_CHANGE_COLUMNS = (
    "run_id",
    "stream",
    "seq",
    "captured_at",
    "drift",
    "window_mean",
    "window_std",
    "snapshot_path",
)

_COLS = ", ".join(COLUMNS)
COPY_FRAMES = f"COPY frames ({_COLS}) FROM STDIN WITH (FORMAT BINARY)"
COPY_STAGING = f"COPY frames_staging ({_COLS}) FROM STDIN WITH (FORMAT BINARY)"
MOVE_STAGED = f"INSERT INTO frames ({_COLS}) SELECT {_COLS} FROM frames_staging ON CONFLICT DO NOTHING RETURNING stream"
INSERT_EVENT = (
    "INSERT INTO events (run_id, stream, seq, captured_at, kind, value) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT DO NOTHING"
)
INSERT_SCENE_CHANGE = (
    f"INSERT INTO scene_changes ({', '.join(SCENE_CHANGE_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(SCENE_CHANGE_COLUMNS))}) ON CONFLICT DO NOTHING"
)


class FrameRow(NamedTuple):
    run_id: int
    stream: str
    seq: int
    t_capture: float  # epoch seconds; a timestamptz only when copied
    similarity: float | None
    drift: float | None
    embedding: np.ndarray  # float32, 1-D
    snapshot_path: str | None  # relative to the run folder
    worker: str
    # Fields a spool written before they existed does not have: their defaults stand in.
    keyframe: bool = True  # in the HNSW index; leads the frames of its segment
    keyframe_seq: int | None = None  # the seq of this frame's segment's keyframe (None: its own)
    thumbnail: bytes | None = None  # a small JPEG
    scene_change: bool = False  # also stored as a row of scene_changes
    window_mean: float | None = None  # metrics' rolling drift statistics at this frame
    window_std: float | None = None
    scene_snapshot_path: str | None = None  # the scene change's snapshot, relative to the run folder
    events: dict[str, float | None] | None = None  # alerts this frame set off: also rows of events


def copy_values(row: FrameRow) -> tuple:
    """The row as ``copy.write_row`` takes it (COPY_TYPES order)."""
    return (
        row.run_id,
        row.stream,
        row.seq,
        datetime.fromtimestamp(row.t_capture, tz=UTC),
        row.similarity,
        row.drift,
        row.embedding,
        row.snapshot_path,
        row.worker,
        row.keyframe,
        row.seq if row.keyframe_seq is None else row.keyframe_seq,
        row.thumbnail,
    )


def scene_change_values(row: FrameRow) -> tuple:
    """The row's scene_changes values (SCENE_CHANGE_COLUMNS order)."""
    return (
        row.run_id,
        row.stream,
        row.seq,
        datetime.fromtimestamp(row.t_capture, tz=UTC),
        row.drift,
        row.window_mean,
        row.window_std,
        row.scene_snapshot_path,
    )


def event_values(rows: list[FrameRow]) -> list[tuple]:
    """The events rows of these frames' alerts."""
    return [
        (row.run_id, row.stream, row.seq, datetime.fromtimestamp(row.t_capture, tz=UTC), kind, value)
        for row in rows
        for kind, value in (row.events or {}).items()
    ]


def write_frames(conn: psycopg.Connection, rows: list[FrameRow], *, lock_timeout_s: float) -> Counter:
    """Copy ``rows`` in one transaction; returns the rows actually inserted, per stream.

    ``lock_timeout_s``: how long the batch may wait for a lock on frames (someone's VACUUM
    FULL, a REINDEX without CONCURRENTLY) before the server gives up on it.
    """
    events = [scene_change_values(row) for row in rows if row.scene_change]
    alerts = event_values(rows)
    lock_timeout = f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}"

    def copy_rows(cur: psycopg.Cursor, statement: str) -> None:
        with cur.copy(statement) as copy:
            copy.set_types(list(COPY_TYPES))
            for row in rows:
                copy.write_row(copy_values(row))

    # Straight into frames: the recorder never sends a frame twice, so this is the usual case,
    # and a fifth faster than going through the staging table.
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(lock_timeout)
            copy_rows(cur, COPY_FRAMES)
            if events:
                cur.executemany(INSERT_SCENE_CHANGE, events)
            if alerts:
                cur.executemany(INSERT_EVENT, alerts)
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
        if alerts:
            cur.executemany(INSERT_EVENT, alerts)
        return inserted


class StoredRow(NamedTuple):
    """A row as read back: what a stream's files and summary are made of."""

    seq: int
    t_capture: float
    similarity: float | None
    drift: float | None
    embedding: np.ndarray
    snapshot_path: str | None
    keyframe: bool
    keyframe_seq: int


SELECT_STORED = (
    "SELECT seq, extract(epoch FROM captured_at)::float8, similarity::float8, drift::float8, embedding, "
    "snapshot_path, keyframe, keyframe_seq FROM frames WHERE run_id = %s AND stream = %s ORDER BY seq"
)


def each_stored_row(
    conn: psycopg.Connection, run_id: int, stream: str, take: Callable[[list[StoredRow]], None], batch: int = 2000
) -> int:
    """Hand ``take`` a stream's rows in seq order, ``batch`` at a time (a server-side cursor: a
    run's millions of rows are never all in memory). Returns how many: none before the frames
    table exists (a run whose recorder died before its first rows were written)."""
    exists = conn.execute("SELECT to_regclass('frames') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return 0
    n = 0
    with conn.transaction(), conn.cursor(name="stored_rows", binary=True) as cur:
        cur.execute(SELECT_STORED, (run_id, stream))
        while rows := cur.fetchmany(batch):
            take(
                [
                    StoredRow(
                        int(seq),
                        float(t) if t is not None else 0.0,
                        sim,
                        drift,
                        _vector(emb),
                        snap,
                        bool(key),
                        int(kseq),
                    )
                    for seq, t, sim, drift, emb, snap, key, kseq in rows
                ]
            )
            n += len(rows)
    return n


def _vector(value: object) -> np.ndarray:
    """An embedding as read back: pgvector's binary loader gives a Vector, its text loader an array."""
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy is not None else value, dtype=np.float32)
