"""The runs table: one row per recorded run, its name the same as its folder's.

A run's row is claimed with its name when the run starts (names are unique), filled in
with its configuration and model, and ended with its summary (summary.json's content).
``Run`` is what readers get back, wherever they read runs: search, events, the web viewer.
``RunRow`` is the whole row, for a recorder that resumes a run or closes one left open
(``open_runs``, ``stored_streams``: what its frames hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

# The columns a run's owner may set after claiming it.
RUN_FIELDS = ("config", "model", "dim", "ended_at", "summary")
_JSON_FIELDS = ("config", "summary")

SELECT_RUN = "SELECT id, name, model, dim, started_at, ended_at, config->'run'->>'dir' FROM runs"


@dataclass(frozen=True)
class Run:
    """A recorded run, as its row says."""

    id: int
    name: str
    model: str | None = None  # e.g. "ViT-B-32/openai": which model embedded its frames
    dim: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    dir: str | None = None  # where the recorder wrote its folder (on the recorder's machine)

    @classmethod
    def from_row(cls, row: tuple) -> Run:
        return cls(*row)


def claim(conn: psycopg.Connection, name: str, started_at: datetime) -> int | None:
    """Insert the run's row; its id, or None when a run of that name exists already."""
    row = conn.execute(
        "INSERT INTO runs (name, started_at) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
        (name, started_at),
    ).fetchone()
    return None if row is None else int(row[0])


def update(conn: psycopg.Connection, run_id: int, **fields: Any) -> None:
    """Set some of RUN_FIELDS; config and summary are JSON."""
    unknown = set(fields) - set(RUN_FIELDS)
    if unknown:
        raise ValueError(f"not a runs column: {', '.join(sorted(unknown))}")
    if not fields:
        return
    sets = ", ".join(f"{k} = %s" for k in fields)
    values = [Jsonb(v) if k in _JSON_FIELDS else v for k, v in fields.items()]
    conn.execute(f"UPDATE runs SET {sets} WHERE id = %s", (*values, run_id))


def end_if_open(conn: psycopg.Connection, run_id: int, ended_at: Any, summary: dict) -> None:
    """End a run that no recorder ended (its summary from its folder's summary.json)."""
    conn.execute(
        "UPDATE runs SET ended_at = %s, summary = %s WHERE id = %s AND ended_at IS NULL",
        (ended_at, Jsonb(summary), run_id),
    )


@dataclass(frozen=True)
class RunRow:
    """A run's whole row: what a recorder needs to resume it, or to close it when its recorder is gone."""

    id: int
    name: str
    started_at: datetime | None
    ended_at: datetime | None
    model: str | None
    dim: int | None
    config: dict[str, Any]
    summary: dict[str, Any] | None

    @property
    def dir(self) -> str | None:
        """Where its recorder wrote its folder (on that recorder's machine)."""
        value = (self.config.get("run") or {}).get("dir") if isinstance(self.config, dict) else None
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class StoredStream:
    """What frames holds of one stream of a run."""

    rows: int
    last_seq: int
    last_t: float  # the last frame's capture time, epoch seconds


SELECT_ROW = "SELECT id, name, started_at, ended_at, model, dim, config, summary FROM runs"


def _run_row(row: tuple) -> RunRow:
    config = row[6] if isinstance(row[6], dict) else {}
    summary = row[7] if isinstance(row[7], dict) else None
    return RunRow(int(row[0]), row[1], row[2], row[3], row[4], row[5], config, summary)


def row_of(conn: psycopg.Connection, name: str) -> RunRow | None:
    """A run's whole row, by name."""
    row = conn.execute(f"{SELECT_ROW} WHERE name = %s", (name,)).fetchone()
    return None if row is None else _run_row(row)


def open_runs(conn: psycopg.Connection) -> list[RunRow]:
    """Runs not ended (ended_at NULL), oldest first: being recorded, or left open by a recorder that died."""
    return [_run_row(r) for r in conn.execute(f"{SELECT_ROW} WHERE ended_at IS NULL ORDER BY id")]


def stored_streams(conn: psycopg.Connection, run_id: int) -> dict[str, StoredStream]:
    """Each stream of a run that has rows in frames: how many, its last seq and capture time."""
    row = conn.execute("SELECT to_regclass('frames') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return {}
    return {
        stream: StoredStream(int(n), int(last), float(t))
        for stream, n, last, t in conn.execute(
            "SELECT stream, count(*), max(seq), extract(epoch FROM max(captured_at))::float8 "
            "FROM frames WHERE run_id = %s GROUP BY stream ORDER BY stream",
            (run_id,),
        )
    }


def find(conn: psycopg.Connection, spec: str) -> Run | None:
    """A run by id (digits) or by name."""
    row = None
    if spec.isdigit():
        row = conn.execute(f"{SELECT_RUN} WHERE id = %s", (int(spec),)).fetchone()
    if row is None:
        row = conn.execute(f"{SELECT_RUN} WHERE name = %s", (spec,)).fetchone()
    return None if row is None else Run.from_row(row)


def with_models(conn: psycopg.Connection) -> list[Run]:
    """Every run that has embedded frames (its model is known), oldest first."""
    return [Run.from_row(r) for r in conn.execute(f"{SELECT_RUN} WHERE model IS NOT NULL ORDER BY id")]
