"""Reading the recorder's database: nearest frames, scene changes, runs.

``Store`` wraps one psycopg connection (autocommit; a search's SET LOCALs live in its own
transaction). The SQL is in search_sql.py, the listings in listings.py; this runs the
search, picks its plan, and turns rows into hits (hits.py) with paths a person can open.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import class_row

from . import listings, runs
from . import search_sql as sql
from .config import RUNS_DIR, SEARCH_EF
from .connection import READ_STATEMENT_TIMEOUT_S, connect
from .filters import FilterError, Filters, FrameRef
from .hits import Hit
from .runs import Run
from .schema import HNSW_INDEX, LATEST_VERSION

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The database cannot answer this (no frames yet, an older schema, an unknown run...)."""


@contextmanager
def reading(
    url: str, runs_dir: str | Path = RUNS_DIR, *, statement_timeout: float = READ_STATEMENT_TIMEOUT_S
) -> Iterator[Store]:
    """A Store on its own connection, for as long as the block runs. DatabaseUnavailable when the
    server cannot be reached, StoreError when it holds no pgvector (nothing was recorded there).
    A statement that runs past ``statement_timeout`` (a table locked, a query gone wrong) is
    cancelled by the server: psycopg.errors.QueryCanceled."""
    conn = connect(url, statement_timeout=statement_timeout, vectors=False)
    try:
        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            raise StoreError("this database has no pgvector extension: nothing was recorded in it") from None
        yield Store(conn, runs_dir)
    finally:
        conn.close()


@dataclass
class SearchResult:
    hits: list[Hit]
    plan: sql.Plan
    notes: list[str] = field(default_factory=list)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


class Store:
    def __init__(self, conn: psycopg.Connection, runs_dir: str | Path = RUNS_DIR):
        self.conn = conn
        self.runs_dir = Path(runs_dir)
        self._frames: bool | None = None
        self._index: bool | None = None
        self._iterative: bool | None = None

    def _value(self, query: str, params: Any = None) -> Any:
        """The first column of the first row (None for no row)."""
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    # -- what the database holds ---------------------------------------------------
    def has_frames(self) -> bool:
        if self._frames is None:
            self._frames = bool(self._value("SELECT to_regclass('frames') IS NOT NULL"))
        return self._frames

    def check_schema(self) -> None:
        """StoreError unless the recorder's migrations have all been applied here."""
        if not self._value("SELECT to_regclass('schema_version') IS NOT NULL"):
            raise StoreError(
                "this database holds nothing recorded (no schema_version table): record a run first, "
                "or run `encoders db migrate`"
            )
        version = self._value("SELECT max(version) FROM schema_version") or 0
        if version < LATEST_VERSION:
            raise StoreError(
                f"the database schema is at version {version}, this program needs {LATEST_VERSION}: "
                f"run `encoders db migrate` (or start a recorder, which migrates it)"
            )

    def iterative_scans(self) -> bool:
        """pgvector >= 0.8 can continue an HNSW scan past ef_search when a filter removes rows."""
        if self._iterative is None:
            row = self.conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            self._iterative = row is not None and _version(row[0]) >= (0, 8)
        return self._iterative

    def has_index(self) -> bool:
        if self._index is None:
            self._index = bool(self._value("SELECT to_regclass(%s) IS NOT NULL", (HNSW_INDEX,)))
        return self._index

    def resolve_run(self, spec: str) -> Run:
        """A run by id or name."""
        run = runs.find(self.conn, spec)
        if run is None:
            raise StoreError(f"no run {spec!r} in this database (`encoders runs` lists them)")
        return run

    def frame_vector(self, ref: FrameRef) -> tuple[np.ndarray, Run, str]:
        """The embedding of RUN[:STREAM]:SEQ, its run and its stream."""
        run = self.resolve_run(ref.run)
        rows = self.conn.execute(sql.FRAME_VECTOR, {"run_id": run.id, "seq": ref.seq, "stream": ref.stream}).fetchall()
        if not rows:
            where = f"stream {ref.stream} of " if ref.stream else ""
            raise StoreError(f"{where}run {run.name} has no embedded frame {ref.seq}")
        if len(rows) > 1:
            raise StoreError(
                f"run {run.name} has frame {ref.seq} in several streams ({', '.join(r[1] for r in rows)}):"
                f" give --frame {ref.run}:STREAM:{ref.seq}"
            )
        vector, stream, _model = rows[0]
        return np.asarray(vector.to_numpy(), dtype=np.float32), run, stream

    def restrict_to_model(self, label: str, filters: Filters) -> tuple[Filters, list[str]]:
        """Only runs embedded with ``label`` can be compared with its query: check the runs asked
        for, or leave out the others (with a note saying so)."""
        embedded = runs.with_models(self.conn)
        if filters.run_ids is not None:
            wrong = [r for r in embedded if r.id in filters.run_ids and r.model != label]
            if wrong:
                raise StoreError(
                    "; ".join(f"run {r.name} was embedded with {r.model}" for r in wrong)
                    + f", but the query is embedded with {label}: embeddings of two models cannot be "
                    f"compared (set ENCODERS_MODEL / ENCODERS_PRETRAINED to the run's)"
                )
            return filters, []
        same = tuple(r.id for r in embedded if r.model == label)
        if not same:
            models = sorted({r.model or "" for r in embedded})
            raise StoreError(
                f"no run in this database was embedded with {label} (it has: "
                f"{', '.join(models) or 'no embedded frames'}); set ENCODERS_MODEL / ENCODERS_PRETRAINED "
                f"to match"
            )
        if len(same) == len(embedded):
            return filters, []
        others = sorted({r.model or "" for r in embedded if r.model != label})
        return filters.with_runs(same), [
            f"{len(embedded) - len(same)} run(s) embedded with {', '.join(others)} are not "
            f"searched: the query is embedded with {label}"
        ]

    # -- nearest frames ------------------------------------------------------------
    def plan(
        self,
        filters: Filters,
        *,
        k: int,
        candidates: int,
        ef_search: int,
        exact_limit: int,
        segment_span_s: float | None = None,
    ) -> sql.Plan:
        if not filters.any or not self.has_index():
            return sql.choose_plan(
                k=k,
                candidates=candidates,
                ef_search=ef_search,
                exact_limit=exact_limit,
                filtered=filters.any,
                has_index=self.has_index(),
            )
        span = self.segment_span() if segment_span_s is None else segment_span_s
        count_q, params = sql.count_keyframes_sql(filters, span, exact_limit + 1)
        matching = self._value(count_q, params)
        total = None
        if matching > exact_limit:
            total = self._value(sql.TOTAL_KEYFRAMES)
        return sql.choose_plan(
            k=k,
            candidates=candidates,
            ef_search=ef_search,
            exact_limit=exact_limit,
            filtered=True,
            matching_keyframes=matching,
            total_keyframes=total if total and total > 0 else None,
            iterative_scans=self.iterative_scans(),
        )

    def segment_span(self) -> float:
        return float(self._value(sql.SEGMENT_SPAN) or 0.0)

    def nearest(
        self,
        q: np.ndarray,
        k: int,
        filters: Filters,
        *,
        candidates: int = 10,
        ef_search: int = SEARCH_EF,
        exact_limit: int = 2000,
    ) -> SearchResult:
        if not self.has_frames():
            raise StoreError("the database holds no frames yet")
        q = np.asarray(q, dtype=np.float32)
        span = self.segment_span() if filters.since is not None else 0.0  # only a since moves back by it
        plan = self.plan(
            filters, k=k, candidates=candidates, ef_search=ef_search, exact_limit=exact_limit, segment_span_s=span
        )
        rows = self._nearest_rows(q, k, filters, plan, span)
        notes = []
        if len(rows) < k and not plan.exact_keyframes and filters.any:
            # The filter removed most of what the index returned: rank its keyframes exactly instead.
            plan = sql.Plan(True, plan.candidates, plan.ef_search)
            rows = self._nearest_rows(q, k, filters, plan, span)
            notes.append(
                "the index found too few frames that pass the filters; ranked the filtered keyframes exactly instead"
            )
        hits = [r.hit(rank, self._run_dir(r.run, r.run_dir)) for rank, r in enumerate(rows, 1)]
        self._add_snapshots(hits)
        return SearchResult(hits, plan, notes)

    def _nearest_rows(self, q: np.ndarray, k: int, filters: Filters, plan: sql.Plan, span: float) -> list[sql.Nearest]:
        query, params = sql.nearest_sql(filters, plan, segment_span_s=span)
        with self.conn.transaction():
            for statement in sql.plan_settings(plan):
                self.conn.execute(statement)
            rows = self.conn.cursor(row_factory=class_row(sql.Nearest))
            return rows.execute(query, {**params, "q": q, "k": k}).fetchall()

    def explain(self, q: np.ndarray, k: int, filters: Filters, plan: sql.Plan) -> str:
        """EXPLAIN of the search as it would run (tests check which indexes serve it)."""
        query, params = sql.nearest_sql(filters, plan, segment_span_s=self.segment_span())
        with self.conn.transaction():
            for statement in sql.plan_settings(plan):
                self.conn.execute(statement)
            rows = self.conn.execute("EXPLAIN " + query, {**params, "q": np.asarray(q, np.float32), "k": k})
            return "\n".join(r[0] for r in rows.fetchall())

    def _add_snapshots(self, hits: list[Hit]) -> None:
        if not hits:
            return
        rows = self.conn.execute(
            sql.SNAPSHOTS,
            {"run_ids": [h.run_id for h in hits], "streams": [h.stream for h in hits], "seqs": [h.seq for h in hits]},
        ).fetchall()
        for i, seq, path in rows:
            hit = hits[int(i) - 1]
            hit.snapshot, hit.snapshot_seq = str(hit.run_dir / path), int(seq)

    def load_thumbnails(self, hits: list[Hit]) -> int:
        """Each hit's stored thumbnail (its own, or its keyframe's) into ``hit.thumbnail_jpeg``; how many had one."""
        if not hits:
            return 0
        rows = self.conn.execute(
            sql.THUMBNAILS,
            {
                "run_ids": [h.run_id for h in hits],
                "streams": [h.stream for h in hits],
                "seqs": [h.seq for h in hits],
                "keyframe_seqs": [h.keyframe_seq for h in hits],
            },
        ).fetchall()
        found = 0
        for i, jpeg in rows:
            if jpeg is not None:
                hits[int(i) - 1].thumbnail_jpeg = bytes(jpeg)
                found += 1
        return found

    def export_thumbnails(self, hits: list[Hit], folder: str | Path) -> int:
        """Write each hit's thumbnail (its own, or its keyframe's) as a JPEG in ``folder``; returns how many."""
        self.load_thumbnails(hits)
        out = Path(folder)
        written = 0
        for hit in hits:
            if hit.thumbnail_jpeg is None:
                continue
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{hit.rank:03d}_{hit.run}_{hit.stream}_{hit.seq:06d}.jpg"
            path.write_bytes(hit.thumbnail_jpeg)
            hit.thumbnail = str(path)
            written += 1
        return written

    # -- scene changes and runs ----------------------------------------------------
    def events(self, filters: Filters, limit: int) -> list[dict[str, Any]]:
        """Scene changes, oldest first (listings.py)."""
        return listings.events(self.conn, filters, limit, self._run_dir)

    def timeline(self, filters: Filters, points: int) -> dict[str, Any]:
        """Drift over a period with its scene changes and alerts (listings.py)."""
        return listings.timeline(self.conn, filters, points, self._run_dir)

    def frame_thumbnail(self, run: str, stream: str, seq: int) -> bytes | None:
        return listings.frame_thumbnail(self.conn, run, stream, seq)

    def runs(self, limit: int, run_ids: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
        """Runs, oldest first, with their counts and summaries (listings.py)."""
        return listings.runs(self.conn, limit, run_ids, self._run_dir, frames_table=self.has_frames())

    def _run_dir(self, name: str, recorded: str | None) -> Path:
        """The run folder: where the recorder wrote it if that is here, else under our runs folder."""
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
        local = self.runs_dir / name
        return local if local.is_dir() or not recorded else Path(recorded)


__all__ = ["FilterError", "Run", "SearchResult", "Store", "StoreError"]
