"""One database row per embedded frame, and its two other shapes: COPY values and spool records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np

from encoders.shared.messages import MetricsRecord

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


def build_row(
    run_id: int,
    rec: MetricsRecord,
    snapshot_path: str | None = None,
    *,
    keyframe: bool = True,
    keyframe_seq: int | None = None,
    thumbnail: bytes | None = None,
    scene_snapshot_path: str | None = None,
) -> FrameRow:
    rolling = rec.rolling if isinstance(rec.rolling, dict) else {}
    return FrameRow(
        run_id,
        rec.stream,
        int(rec.seq),
        float(rec.t_capture),
        _opt_float(rec.similarity),
        _opt_float(rec.drift),
        np.asarray(rec.vector, dtype=np.float32),
        snapshot_path,
        str(rec.worker),
        bool(keyframe),
        int(rec.seq) if keyframe_seq is None else int(keyframe_seq),
        thumbnail,
        bool(rec.scene_change),
        _opt_float(rolling.get("mean")),
        _opt_float(rolling.get("std")),
        scene_snapshot_path,
    )


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


SCENE_CHANGE_COLUMNS = ("run_id", "stream", "seq", "captured_at", "drift", "window_mean", "window_std", "snapshot_path")


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


def to_spool(row: FrameRow) -> dict[str, Any]:
    """The row as a msgpack-able map; the embedding as its raw float32 bytes."""
    d = row._asdict()
    d["embedding"] = np.ascontiguousarray(row.embedding, dtype=np.float32).tobytes()
    return d


_REQUIRED = set(FrameRow._fields) - set(FrameRow._field_defaults)


def from_spool(d: Any) -> FrameRow:
    """Inverse of to_spool; ValueError for anything that is not such a map."""
    if not isinstance(d, dict) or not set(d) >= _REQUIRED or not set(d) <= set(FrameRow._fields):
        raise ValueError(f"not a spooled frame row: {str(d)[:80]}")
    emb = d["embedding"]
    if not isinstance(emb, bytes) or len(emb) % 4:
        raise ValueError("spooled embedding is not float32 bytes")
    thumb = d.get("thumbnail")
    if thumb is not None and not isinstance(thumb, bytes):
        raise ValueError("spooled thumbnail is not bytes")
    key_seq = d.get("keyframe_seq")
    return FrameRow(
        int(d["run_id"]),
        str(d["stream"]),
        int(d["seq"]),
        float(d["t_capture"]),
        _opt_float(d["similarity"]),
        _opt_float(d["drift"]),
        np.frombuffer(emb, dtype=np.float32),
        d["snapshot_path"],
        str(d["worker"]),
        bool(d.get("keyframe", True)),
        None if key_seq is None else int(key_seq),
        thumb,
        bool(d.get("scene_change", False)),
        _opt_float(d.get("window_mean")),
        _opt_float(d.get("window_std")),
        d.get("scene_snapshot_path"),
    )


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)
