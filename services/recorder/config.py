"""The recorder's settings."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.endpoints import FRAMES_PORT, RECORDS_PORT, this_machine
from encoders.shared.settings import setting
from encoders.shared.storage.config import DatabaseConfig

# The database writer: rows that gather while a batch is being written go out with the next
# one, up to this many --db-batch's worth; then the receive loop waits.
DB_MAX_WAITING_BATCHES = 8


@dataclass
class RecorderConfig(DatabaseConfig):
    records: str = setting(this_machine(RECORDS_PORT), "Metrics' record endpoint to pull from")
    frames: str = setting(this_machine(FRAMES_PORT), "Ingest frame endpoint(s) for snapshots, comma-separated")
    run_dir: str = setting("", "This run's folder (default: <runs-dir>/YYYYMMDD_HHMMSS)")
    snapshot_interval: float = setting(30.0, "Seconds between snapshots", minimum=0.0)
    embedding_interval: int = setting(100, "Frames between embedding saves (one .npz per batch)", minimum=1)
    stream_dirs: bool = setting(False, "Give every stream its own folder (the all-in-one does when it has several)")
    db_batch: int = setting(
        500,
        "Rows per COPY into the database; rows that gather while one is being written go out together, up to "
        f"{DB_MAX_WAITING_BATCHES} times this",
        minimum=1,
    )
    db_flush_s: float = setting(0.5, "Longest a row waits before it is written, seconds", minimum=0.01)
    exit_after_streams: int = setting(0, "Exit once this many streams have ended (0 = run until stopped)", minimum=0)
    pipeline_config: str = setting("", "JSON of the whole pipeline's settings, stored in config.json and the run row")
    ready_file: str = setting(
        "", "Once the run is claimed and the sockets are open, write the run's id, name and folder here (JSON)"
    )
    db_connect_timeout: float = setting(
        10.0, "Seconds the database may take to answer at start before the recorder gives up", minimum=0.1
    )
    db_retry_max: float = setting(
        10.0, "Longest wait between attempts to reach a database that went away, seconds", minimum=0.1
    )
    db_final_wait: float = setting(
        5.0,
        "At exit, seconds to keep trying an unreachable database before leaving its rows in the run's spool file",
        minimum=0.0,
    )
    thumbnails: str = setting(
        "all",
        "Embedded frames that get a small JPEG thumbnail in the database, for search results: all, keyframes "
        "(one per segment of near-identical frames) or none",
        choices=("all", "keyframes", "none"),
    )
    thumbnail_size: int = setting(160, "Thumbnail's longest side, pixels", minimum=16)
    thumbnail_quality: int = setting(70, "Thumbnail JPEG quality", minimum=1, maximum=100)
    thumbnail_threads: int = setting(
        0,
        "Threads making thumbnails side by side, 0 = one per core up to 8 (a thumbnail takes about 0.8 ms of a "
        "core for a 640x480 frame)",
        minimum=0,
    )
    frame_cache: int = setting(
        600,
        "JPEGs of recent frames kept per stream until their record arrives (snapshots and thumbnails are made "
        "from them)",
        minimum=1,
    )
    keyframe_drift: float = setting(
        0.05,
        "A frame further than this (cosine distance) from its segment's keyframe starts a new segment; only "
        "keyframes go into the HNSW index",
        minimum=0.0,
    )
    keyframe_max_s: float = setting(
        5.0,
        "Longest segment, seconds of capture time (a search ranks every frame of the segments it finds)",
        minimum=0.01,
    )
