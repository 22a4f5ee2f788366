"""An embedded frame's database row (storage.frames.FrameRow), made from its record, and as a spool record."""

from __future__ import annotations

from typing import Any

import numpy as np

from encoders.shared.messages import MetricsRecord
from encoders.shared.storage.frames import FrameRow


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
