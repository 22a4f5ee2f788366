"""The database schema, as numbered migrations applied once each, in order, and the functions that apply it.

``schema_version`` records every migration applied. At every start (and with ``encoders db
migrate``) the ones not recorded yet run, each in its own transaction under an advisory
lock, so two recorders starting together apply each migration once. Every statement is
idempotent (IF NOT EXISTS) as well, so a database that predates the version table is
brought to the same state.

``frames`` is created only when the first record tells the embedding size D: a column
``vector(D)`` is what lets pgvector index it. ``frames_steps(D)`` creates it in its latest
shape; a migration that changes frames does so only where the table exists already
(``frames_statements``).

Search over frames: consecutive frames of a camera are near-identical, so frames are cut
into segments (a keyframe and the frames after it that stay close to it, see
services/recorder/keyframes.py), and only keyframes go into the HNSW index. A search finds the nearest
keyframes through the index, then ranks every frame of their segments exactly. This keeps
the index small (inserts fast) and free of the dense clumps of near-duplicates in which
HNSW's greedy search gets stuck.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg

from .errors import DatabaseRefused

log = logging.getLogger(__name__)

# Serialises schema changes between recorders that start at the same moment.
ADVISORY_LOCK_KEY = 0x656E636F  # "enco"

# pgvector's HNSW index takes vectors of at most this many dimensions.
HNSW_MAX_DIM = 2000
HNSW_INDEX = "frames_keyframe_hnsw"
# The graph: pgvector's default m (16) with ef_construction 128 instead of its 64. Measured
# on the 15,435 keyframes of 2,000,000 synthetic video frames, inserted as the recorder inserts
# them (`python -m benchmarks hnsw`, benchmarks/RESULTS.md): queries far from every frame (CLIP
# text queries are, at cosine ~0.3) strand the greedy search in the wrong views; at ef_search
# 200 their keyframe recall@10 was 0.902 with 64 (19 queries of 200 finding none of their ten)
# and 0.970 with 128, reaching 1.000 at ef_search 800. It costs each keyframe insert about
# 1.2 times (only keyframes are indexed, about one frame in a hundred). m 32 did worse (0.905).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 128
HNSW_OPTIONS = f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
# At query time a larger hnsw.ef_search than pgvector's 40 does the rest: SearchConfig's
# search_ef (pictures, frames) and search_ef_text (sentences).


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...] = ()
    # Run only when frames exists already: a frames table created later has the latest shape.
    frames_statements: tuple[str, ...] = ()


# Before any migration: the table that records them (its description came later).
BOOTSTRAP = (
    """CREATE TABLE IF NOT EXISTS schema_version (
           version int PRIMARY KEY,
           applied_at timestamptz NOT NULL DEFAULT now())""",
    "ALTER TABLE schema_version ADD COLUMN IF NOT EXISTS description text",
)

SCENE_CHANGES_TABLE = """CREATE TABLE IF NOT EXISTS scene_changes (
    run_id bigint NOT NULL REFERENCES runs (id),
    stream text NOT NULL,
    seq bigint NOT NULL,
    captured_at timestamptz NOT NULL,
    drift real,
    window_mean real,  -- metrics' rolling drift statistics at this frame
    window_std real,
    snapshot_path text,  -- relative to the run folder
    PRIMARY KEY (run_id, stream, seq))"""

# Vectors inline (ranking a segment reads them without TOAST lookups), thumbnails out of
# line (scans over frames do not read them). (ALTER, not CREATE's STORAGE: PostgreSQL < 16.)
FRAMES_STORAGE = (
    "ALTER TABLE frames ALTER COLUMN embedding SET STORAGE PLAIN",
    "ALTER TABLE frames ALTER COLUMN thumbnail SET STORAGE EXTERNAL",
)

# Indexes on frames, for a new table and for the migration of an old one alike.
FRAMES_INDEXES = (
    # A segment's frames, for the second stage of a search.
    "CREATE INDEX IF NOT EXISTS frames_segment ON frames (run_id, stream, keyframe_seq)",
    # Counting and exact ranking of the keyframes a filter leaves.
    "CREATE INDEX IF NOT EXISTS frames_keyframe_time ON frames (captured_at) WHERE keyframe",
    "CREATE INDEX IF NOT EXISTS frames_keyframe_run ON frames (run_id, captured_at) WHERE keyframe",
    # Time filters over all frames (drift above a threshold in a time range, ...).
    "CREATE INDEX IF NOT EXISTS frames_time ON frames (captured_at)",
    # The last snapshot at or before a frame (a search hit's picture): snapshots are few.
    "CREATE INDEX IF NOT EXISTS frames_snapshots ON frames (run_id, stream, seq) WHERE snapshot_path IS NOT NULL",
)


def hnsw_index(dim: int) -> tuple[str, ...]:
    if dim > HNSW_MAX_DIM:
        return ()
    return (
        f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON frames USING hnsw (embedding vector_cosine_ops) "
        f"{HNSW_OPTIONS} WHERE keyframe",
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "runs",
        (
            "CREATE EXTENSION IF NOT EXISTS vector",
            """CREATE TABLE IF NOT EXISTS runs (
               id bigserial PRIMARY KEY,
               name text UNIQUE NOT NULL,
               started_at timestamptz,
               ended_at timestamptz,
               model text,
               dim int,
               config jsonb,
               summary jsonb)""",
        ),
    ),
    Migration(
        2,
        "scene changes; keyframe segments and their HNSW index; thumbnails",
        (
            SCENE_CHANGES_TABLE,
            "CREATE INDEX IF NOT EXISTS scene_changes_time ON scene_changes (captured_at)",
        ),
        (
            # Every frame recorded before segments existed is a keyframe of its own: the new
            # partial index then holds what the old full one did.
            "ALTER TABLE frames ADD COLUMN IF NOT EXISTS keyframe boolean NOT NULL DEFAULT true",
            "ALTER TABLE frames ADD COLUMN IF NOT EXISTS keyframe_seq bigint",
            "UPDATE frames SET keyframe_seq = seq WHERE keyframe_seq IS NULL",
            "ALTER TABLE frames ALTER COLUMN keyframe_seq SET NOT NULL",
            "ALTER TABLE frames ALTER COLUMN keyframe DROP DEFAULT",
            "ALTER TABLE frames ADD COLUMN IF NOT EXISTS thumbnail bytea",
            *FRAMES_STORAGE,
            *FRAMES_INDEXES,
            # Built only where the old full index was: never for vectors HNSW cannot take.
            f"""DO $$ BEGIN
                IF to_regclass('frames_embedding_hnsw') IS NOT NULL THEN
                    CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON frames USING hnsw (embedding vector_cosine_ops)
                        WHERE keyframe;
                    DROP INDEX frames_embedding_hnsw;
                END IF;
            END $$""",
        ),
    ),
    # Keyframes inserted from now on are linked with the denser search; the graph already built
    # stays as it was until `REINDEX INDEX CONCURRENTLY frames_keyframe_hnsw` (README).
    Migration(
        3,
        f"HNSW graph built with ef_construction {HNSW_EF_CONSTRUCTION} (recall of text queries)",
        (),
        (f"ALTER INDEX IF EXISTS {HNSW_INDEX} SET (ef_construction = {HNSW_EF_CONSTRUCTION})",),
    ),
    # summary.json (and runs.summary) has one shape whatever the number of cameras: the run, each
    # stream under "streams", and "totals". A one-camera run used to put its stream's figures at
    # the top, beside "other_streams"; those rows are rewritten here so readers know one shape.
    Migration(
        4,
        "runs.summary in one shape for one camera or several",
        (
            """UPDATE runs SET summary = jsonb_build_object(
                   'run', summary->'run',
                   'streams', jsonb_build_object(coalesce(summary->>'stream', ''),
                                                 (summary - 'run' - 'other_streams') || '{"folder": "."}'),
                   'totals', jsonb_build_object('frames', summary->'frames', 'records', summary->'records',
                                                'snapshots', summary->'snapshots',
                                                'npz_batches', summary->'npz_batches', 'db_rows', summary->'db_rows'))
               WHERE jsonb_typeof(summary) = 'object' AND NOT summary ? 'streams'""",
        ),
    ),
    # Alerts the core computes from the records (services/metrics/alerts.py): one row per frame
    # and kind, with the value measured (the seconds a feed was frozen, a blackout's contrast).
    Migration(
        5,
        "events: alerts of a frozen feed or a blackout",
        (
            """CREATE TABLE IF NOT EXISTS events (
               run_id bigint NOT NULL REFERENCES runs (id),
               stream text NOT NULL,
               seq bigint NOT NULL,
               captured_at timestamptz NOT NULL,
               kind text NOT NULL,
               value double precision,
               PRIMARY KEY (run_id, stream, seq, kind))""",
            "CREATE INDEX IF NOT EXISTS events_time ON events (captured_at)",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def frames_steps(dim: int) -> tuple[str, ...]:
    """frames in its latest shape, for D-dimensional embeddings, with its indexes."""
    return (
        f"""CREATE TABLE IF NOT EXISTS frames (
               run_id bigint NOT NULL REFERENCES runs (id),
               stream text NOT NULL,
               seq bigint NOT NULL,
               captured_at timestamptz,
               similarity real,
               drift real,
               embedding vector({int(dim)}) NOT NULL,
               snapshot_path text,
               worker text,
               keyframe boolean NOT NULL,
               keyframe_seq bigint NOT NULL,
               thumbnail bytea,
               PRIMARY KEY (run_id, stream, seq))""",
        *FRAMES_STORAGE,
        *FRAMES_INDEXES,
        *hnsw_index(dim),
    )


# The declared type of frames.embedding ('vector(512)'), or no row when there is no table.
FRAMES_EMBEDDING_TYPE = """
    SELECT format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a
    WHERE a.attrelid = to_regclass('frames') AND a.attname = 'embedding' AND NOT a.attisdropped"""

# A batch that holds rows stored already (a replay) is copied here, then moved with ON CONFLICT
# DO NOTHING: a replayed row is never doubled.
STAGING_TABLE = "CREATE TEMP TABLE IF NOT EXISTS frames_staging (LIKE frames) ON COMMIT DELETE ROWS"


# -- applying it ---------------------------------------------------------------------------


def migrate(conn: psycopg.Connection, target: str = "the database") -> list[int]:
    """Apply the migrations ``conn``'s database has not had yet; returns their versions.

    One transaction each, under the advisory lock: a failing migration leaves the ones
    before it applied, and two recorders starting together apply each one once.
    DatabaseRefused for a schema newer than this program's.
    """
    applied = []
    for migration in MIGRATIONS:
        with conn.transaction():
            # No statement timeout (the connection's, if any): a migration may build an index over
            # every row stored, and waits for a recorder starting beside it (the advisory lock).
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
            for step in BOOTSTRAP:
                conn.execute(step)
            done = {v for (v,) in conn.execute("SELECT version FROM schema_version")}
            if max(done, default=0) > LATEST_VERSION:
                raise DatabaseRefused(
                    f"{target} has schema version {max(done)}, newer than this program's {LATEST_VERSION}: "
                    "upgrade encoders"
                )
            if migration.version in done:
                continue
            row = conn.execute("SELECT to_regclass('frames') IS NOT NULL").fetchone()
            frames_exists = bool(row and row[0])
            for step in migration.statements + (migration.frames_statements if frames_exists else ()):
                conn.execute(step)
            conn.execute(
                "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
            applied.append(migration.version)
            log.info("database schema: applied migration %d (%s)", migration.version, migration.description)
    return applied


def versions(conn: psycopg.Connection) -> list[tuple[int, str | None, datetime]]:
    """(version, description, applied_at) of every migration applied, oldest first."""
    return conn.execute("SELECT version, description, applied_at FROM schema_version ORDER BY version").fetchall()


def ensure_frames(conn: psycopg.Connection, dim: int, target: str = "the database") -> None:
    """Create frames for D-dimensional embeddings, or check that the existing one has that D."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        row = conn.execute(FRAMES_EMBEDDING_TYPE).fetchone()
        if row is not None and row[0] != f"vector({dim})":
            raise DatabaseRefused(
                f"table frames in {target} stores embeddings of type {row[0]}, but this model gives vector({dim}); "
                "record this model into another database"
            )
        if row is None:
            for step in frames_steps(dim):
                conn.execute(step)
            if dim > HNSW_MAX_DIM:
                log.warning(
                    "embeddings of %d dimensions are stored without an HNSW index (pgvector's limit is %d)",
                    dim,
                    HNSW_MAX_DIM,
                )
    conn.execute(STAGING_TABLE)
