"""An embedded frame's database row (storage.frames.FrameRow), made from its record, and as a spool record."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from encoders.shared.messages import EVENT_KIND, MetricsRecord
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
        dict(rec.events) or None,
    )


def to_spool(row: FrameRow) -> dict[str, Any]:
    """The row as a msgpack-able map; the embedding as its raw float32 bytes."""
    d = row._asdict()
    d["embedding"] = np.ascontiguousarray(row.embedding, dtype=np.float32).tobytes()
    return d


_REQUIRED = set(FrameRow._fields) - set(FrameRow._field_defaults)


def from_spool(d: Any) -> FrameRow:
    """Inverse of to_spool; ValueError for anything that is not such a map.

    A spool is a file on disk: every value is checked for its type and range as a message's
    would be (a NaN time, an infinite seq or a text where a number goes is refused here, not
    by the database or a reader of the run's files later).
    """
    if not isinstance(d, dict) or not set(d) >= _REQUIRED or not set(d) <= set(FrameRow._fields):
        raise ValueError(f"not a spooled frame row: {str(d)[:80]}")
    emb = d["embedding"]
    if not isinstance(emb, bytes) or not emb or len(emb) % 4:
        raise ValueError("spooled embedding is not float32 bytes")
    vector = np.frombuffer(emb, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise ValueError("spooled embedding is not finite")
    return FrameRow(
        _whole(d, "run_id"),
        _of(d, "stream", str),
        _whole(d, "seq"),
        _finite(d, "t_capture"),
        _finite(d, "similarity", optional=True),
        _finite(d, "drift", optional=True),
        vector,
        _of(d, "snapshot_path", str, optional=True),
        _of(d, "worker", str),
        _of(d, "keyframe", bool, default=True),
        _whole(d, "keyframe_seq", optional=True),
        _of(d, "thumbnail", bytes, optional=True),
        _of(d, "scene_change", bool, default=False),
        _finite(d, "window_mean", optional=True),
        _finite(d, "window_std", optional=True),
        _of(d, "scene_snapshot_path", str, optional=True),
        _events(d),
    )


_BIGINT = 2**63 - 1  # the database's integers


def _of(d: dict, key: str, kind: type, *, optional: bool = False, default: Any = None) -> Any:
    """``d[key]`` if it is exactly a ``kind`` (None if ``optional``); ``default`` if a spool written
    before the field existed has none."""
    if key not in d and default is not None:
        return default
    value = d.get(key)
    if (value is None and optional) or type(value) is kind:
        return value
    raise ValueError(f"spooled {key} is not a {kind.__name__}: {str(value)[:40]}")


def _whole(d: dict, key: str, *, optional: bool = False) -> Any:
    value = d.get(key)
    if value is None and optional:
        return None
    if type(value) is not int or not 0 <= value <= _BIGINT:
        raise ValueError(f"spooled {key} is not a whole number in range: {str(value)[:40]}")
    return value


def _events(d: dict) -> dict[str, float | None] | None:
    events = d.get("events")
    if events is None:
        return None
    if not isinstance(events, dict) or len(events) > 16:
        raise ValueError(f"spooled events are not a map of at most 16: {str(events)[:40]}")
    if not all(isinstance(k, str) and EVENT_KIND.fullmatch(k) for k in events):
        raise ValueError(f"spooled events have a kind that is not a short text: {str(events)[:40]}")
    return {k: _finite(events, k, optional=True) for k in events}


def _finite(d: dict, key: str, *, optional: bool = False) -> Any:
    value = d.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"spooled {key} is not a finite number: {str(value)[:40]}")
    return float(value)


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)
