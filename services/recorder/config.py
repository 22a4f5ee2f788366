"""The recorder's settings."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.settings import CoreConnection, StreamDown, setting
from encoders.shared.storage.config import DatabaseConfig

from .policy import Policy

# The database writer: rows that gather while a batch is being written go out with the next
# one, up to this many --db-batch's worth; then the receive loop takes no more records until one
# is written (they wait with the core, which holds them until acknowledged).
DB_MAX_WAITING_BATCHES = 8


@dataclass
class RetentionConfig(DatabaseConfig):
    """How long runs are kept (retention.py): the recorder applies it as it goes, `encoders prune` on demand."""

    retention_days: float = setting(
        0.0, "Delete whole runs that ended more than this many days ago (0: keep them)", minimum=0.0
    )
    retention_gb: float = setting(
        0.0,
        "Keep the runs (folders and rows) under this many GB: oldest finished runs first, then non-keyframe "
        "thumbnails (0: no limit)",
        minimum=0.0,
    )

    def policy(self) -> Policy:
        return Policy(days=self.retention_days, gb=self.retention_gb)


@dataclass
class RecorderConfig(StreamDown, RetentionConfig, CoreConnection):
    takeover: bool = setting(
        False, "Replace the recorder the core has (it stops, writing what it holds) instead of being refused"
    )
    run_dir: str = setting("", "This run's folder (default: <runs-dir>/YYYYMMDD_HHMMSS)")
    snapshot_interval: float = setting(30.0, "Seconds between snapshots", minimum=0.0)
    snapshot_wait: float = setting(
        2.0,
        "Longest wait for a snapshot's picture, asked of the stream's ingest when its record comes (periodic and "
        "scene changes), seconds; its row waits as long, then goes without it (counted snapshots_missed)",
        minimum=0.01,
    )
    embedding_interval: int = setting(100, "Frames between embedding saves (one .npz per batch)", minimum=1)
    stream_dirs: bool = setting(False, "Give every stream its own folder (the all-in-one does when it has several)")
    db_batch: int = setting(
        500,
        "Rows per COPY into the database; rows that gather while one is being written go out together, up to "
        f"{DB_MAX_WAITING_BATCHES} times this and no more than the database has been writing in half of "
        "ENCODERS_DB_WRITE_WARN (its pace, measured: rows that go into the HNSW index are slow)",
        minimum=1,
    )
    db_flush_s: float = setting(0.5, "Longest a row waits before it is written, seconds", minimum=0.01)
    pipeline_config: str = setting("", "JSON of the whole pipeline's settings, stored in config.json and the run row")
    ready_file: str = setting(
        "", "Once the run is claimed and the sockets are open, write the run's id, name and folder here (JSON)"
    )
    mqtt_url: str = setting(
        "",
        "MQTT broker for alerts and scene changes, mqtt://[user:password@]host[:port] (Home Assistant's discovery "
        "included; empty = none)",
        secret="url",
    )
    mqtt_prefix: str = setting("encoders", "Topic prefix of the alerts on MQTT: PREFIX/<stream>/<kind>")
    mqtt_discovery: str = setting("homeassistant", "Home Assistant's MQTT discovery prefix")
    webhook_url: str = setting(
        "", "URL that gets an HTTP POST (JSON) of every alert and scene change, retried (empty = none)", secret="url"
    )
    # stream_down_after: 'stream_down' told to MQTT and the webhook, and stored (settings.StreamDown)
    prune_every: float = setting(
        3600.0, "Seconds between applying the retention policy (and checking the disk's free space)", minimum=1.0
    )
    db_connect_timeout: float = setting(
        10.0, "Seconds the database may take to answer at start before the recorder gives up", minimum=0.1
    )
    db_statement_timeout: float = setting(
        30.0,
        "Seconds one statement may run on the database (a batch of rows, a lookup) before the server cancels it: a "
        "locked table or a stuck query is then an outage (rows spooled, retried), not a wait without end; a batch "
        "still unfinished 10 s later has its connection cut (a server that does not answer at all). 0 = no limit "
        "(needed behind a pooler that refuses connection options, as PgBouncer does)",
        minimum=0.0,
    )
    db_write_warn: float = setting(
        10.0, "Say in the log when a batch of rows has been writing this many seconds and has not finished", minimum=0.1
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
        "Embedded frames whose thumbnail (made by the worker, carried by the record) is stored with their row, "
        "for search results: all, keyframes (one per segment of near-identical frames) or none",
        choices=("all", "keyframes", "none"),
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
