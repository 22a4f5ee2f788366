"""The recorder's database schema: every statement, in the order it is applied.

Each step is idempotent (IF NOT EXISTS), so the whole list runs on every start and a
fresh database and an old one end up the same. A later change that cannot be written
that way becomes a new numbered step, recorded in ``schema_version`` once applied.

``frames`` is created only when the first record tells the embedding size D: a column
``vector(D)`` is what lets pgvector index it.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# Serialises schema changes between recorders that start at the same moment.
ADVISORY_LOCK_KEY = 0x656E636F  # "enco"

BASE_STEPS: tuple[str, ...] = (
    "CREATE EXTENSION IF NOT EXISTS vector",
    """CREATE TABLE IF NOT EXISTS schema_version (
           version int PRIMARY KEY,
           applied_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS runs (
           id bigserial PRIMARY KEY,
           name text UNIQUE NOT NULL,
           started_at timestamptz,
           ended_at timestamptz,
           model text,
           dim int,
           config jsonb,
           summary jsonb)""",
    f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION}) ON CONFLICT DO NOTHING",
)

# pgvector's HNSW index takes vectors of at most this many dimensions.
HNSW_MAX_DIM = 2000


def frames_steps(dim: int) -> tuple[str, ...]:
    steps = [
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
               PRIMARY KEY (run_id, stream, seq))""",
    ]
    if dim <= HNSW_MAX_DIM:
        steps.append("CREATE INDEX IF NOT EXISTS frames_embedding_hnsw ON frames USING hnsw (embedding vector_cosine_ops)")
    return tuple(steps)


# The declared type of frames.embedding ('vector(512)'), or no row when there is no table.
FRAMES_EMBEDDING_TYPE = """
    SELECT format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a
    WHERE a.attrelid = to_regclass('frames') AND a.attname = 'embedding' AND NOT a.attisdropped"""

# Rows are copied here first, then moved with ON CONFLICT DO NOTHING: a replayed row is never doubled.
STAGING_TABLE = "CREATE TEMP TABLE IF NOT EXISTS frames_staging (LIKE frames) ON COMMIT DELETE ROWS"
