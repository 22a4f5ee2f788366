"""One database row per embedded frame, and its two other shapes: COPY values and spool records."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np

from encoders.shared.messages import MetricsRecord

# The frames table's columns, in the order rows are copied (see schema.py).
COLUMNS = ("run_id", "stream", "seq", "captured_at", "similarity", "drift", "embedding", "snapshot_path", "worker")
# Binary COPY needs every column's type up front.
COPY_TYPES = ("int8", "text", "int8", "timestamptz", "float4", "float4", "vector", "text", "text")


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


def build_row(run_id: int, rec: MetricsRecord, snapshot_path: str | None = None) -> FrameRow:
    return FrameRow(run_id, rec.stream, int(rec.seq), float(rec.t_capture), _opt_float(rec.similarity),
                    _opt_float(rec.drift), np.asarray(rec.vector, dtype=np.float32), snapshot_path, str(rec.worker))


def copy_values(row: FrameRow) -> tuple:
    """The row as ``copy.write_row`` takes it (COPY_TYPES order)."""
    return (row.run_id, row.stream, row.seq, datetime.fromtimestamp(row.t_capture, tz=timezone.utc),
            row.similarity, row.drift, row.embedding, row.snapshot_path, row.worker)


def to_spool(row: FrameRow) -> dict[str, Any]:
    """The row as a msgpack-able map; the embedding as its raw float32 bytes."""
    d = row._asdict()
    d["embedding"] = np.ascontiguousarray(row.embedding, dtype=np.float32).tobytes()
    return d


def from_spool(d: Any) -> FrameRow:
    """Inverse of to_spool; ValueError for anything that is not such a map."""
    if not isinstance(d, dict) or set(d) != set(FrameRow._fields):
        raise ValueError(f"not a spooled frame row: {str(d)[:80]}")
    emb = d["embedding"]
    if not isinstance(emb, bytes) or len(emb) % 4:
        raise ValueError("spooled embedding is not float32 bytes")
    return FrameRow(int(d["run_id"]), str(d["stream"]), int(d["seq"]), float(d["t_capture"]),
                    _opt_float(d["similarity"]), _opt_float(d["drift"]), np.frombuffer(emb, dtype=np.float32),
                    d["snapshot_path"], str(d["worker"]))


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)
