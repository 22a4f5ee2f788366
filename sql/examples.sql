-- Questions asked of the recorded frames, as you would type them in psql.
--
--   psql "postgresql://postgres:@/postgres?host=$PWD/runs/.pgdata"     (the embedded database)
--   psql "$ENCODERS_DATABASE_URL"                                       (your own server)
--
-- Each query below uses psql variables; set them first, e.g.
--   \set run 1
--   \set stream cam0
--   \set seq 42
--   \set k 10
--   \set drift 0.2
--   \set since '2026-01-07 14:00'
--   \set until '2026-01-07 15:00'
--   \set vec '[0.01, -0.03, ...]'        -- a query embedding (512 numbers for ViT-B-32)
-- or give them on the command line: psql -v run=1 -v stream=cam0 -v seq=42 -v k=10 ...
--
-- How frames are indexed: consecutive frames of a camera are near-identical, so the
-- recorder cuts each stream into segments (a keyframe and the frames after it that stay
-- close to it, at most a few seconds). Only keyframes are in the HNSW index
-- (frames_keyframe_hnsw, WHERE keyframe). A nearest-frames query therefore finds the
-- nearest keyframes first (the index), then ranks every frame of their segments:
-- that is the WITH keys ... part below. Ranking all frames directly also works
-- (ORDER BY embedding <=> ... LIMIT k without the keys step) but reads the whole table.
--
-- Each query is separated by a "-- name:" line; tests/integration/test_search.py runs
-- every one of them with psql and checks its answer.

-- name: nearest_to_frame
-- The :k frames that looked most like frame :seq of stream :stream in run :run.
-- (Raise hnsw.ef_search and the keys LIMIT together to look further: SET hnsw.ef_search = 100;)
WITH keys AS MATERIALIZED (
    SELECT run_id, stream, seq FROM frames
    WHERE keyframe
    ORDER BY embedding <=> (SELECT embedding FROM frames WHERE run_id = :run AND stream = :'stream' AND seq = :seq)
    LIMIT 10)
SELECT r.name AS run, f.stream, f.seq, f.captured_at,
       1 - (f.embedding <=> (SELECT embedding FROM frames WHERE run_id = :run AND stream = :'stream' AND seq = :seq))
           AS similarity
FROM keys
JOIN frames f ON f.run_id = keys.run_id AND f.stream = keys.stream AND f.keyframe_seq = keys.seq
JOIN runs r ON r.id = f.run_id
ORDER BY similarity DESC
LIMIT :k;

-- name: nearest_to_vector
-- The :k frames nearest to an embedding (from `encoders search --text ... --format json`'s
-- model, or from Python), as cosine similarity.
WITH keys AS MATERIALIZED (
    SELECT run_id, stream, seq FROM frames
    WHERE keyframe
    ORDER BY embedding <=> :'vec'::vector
    LIMIT 10)
SELECT r.name AS run, f.stream, f.seq, f.captured_at, 1 - (f.embedding <=> :'vec'::vector) AS similarity
FROM keys
JOIN frames f ON f.run_id = keys.run_id AND f.stream = keys.stream AND f.keyframe_seq = keys.seq
JOIN runs r ON r.id = f.run_id
ORDER BY similarity DESC
LIMIT :k;

-- name: nearest_to_vector_in_run
-- The same within one run. A filter this narrow leaves few keyframes: rank them all
-- exactly ("+ 0" keeps the planner from the HNSW index, whose scan pgvector 0.6 cuts off
-- at hnsw.ef_search rows before the filter would leave too few).
WITH keys AS MATERIALIZED (
    SELECT run_id, stream, seq FROM frames
    WHERE keyframe AND run_id = :run
    ORDER BY (embedding <=> :'vec'::vector) + 0
    LIMIT 10)
SELECT f.stream, f.seq, f.captured_at, 1 - (f.embedding <=> :'vec'::vector) AS similarity
FROM keys
JOIN frames f ON f.run_id = keys.run_id AND f.stream = keys.stream AND f.keyframe_seq = keys.seq
ORDER BY similarity DESC
LIMIT :k;

-- name: drift_above
-- When did the view change? Frames of run :run whose drift from the previous frame is above :drift.
SELECT f.stream, f.seq, f.captured_at, f.drift
FROM frames f
WHERE f.run_id = :run AND f.drift > :drift
ORDER BY f.captured_at, f.stream, f.seq;

-- name: scene_changes_in_range
-- Scene changes (drift that stood out from the rolling window) between :since and :until,
-- with the snapshot taken of each (relative to its run's folder).
SELECT r.name AS run, e.stream, e.seq, e.captured_at, e.drift, e.snapshot_path
FROM scene_changes e
JOIN runs r ON r.id = e.run_id
WHERE e.captured_at >= :'since' AND e.captured_at < :'until'
ORDER BY e.captured_at, e.stream, e.seq;

-- name: runs
-- Every run with its model and how many frames and scene changes it stored.
SELECT r.id, r.name, r.started_at, r.ended_at, r.model,
       (SELECT count(*) FROM frames f WHERE f.run_id = r.id) AS frames,
       (SELECT count(*) FROM scene_changes e WHERE e.run_id = r.id) AS scene_changes
FROM runs r
ORDER BY r.started_at NULLS FIRST, r.id;
