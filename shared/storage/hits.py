"""A search's hit: what `encoders search` prints and the web viewer's /api/search returns.

Without psycopg (storage's readers need it, the hit's readers do not): the web viewer's OpenAPI
document takes its fields from here (services/viewer/web/openapi.py) on a viewer that has no
database, and ``store.Store`` makes hits from its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass
class Hit:
    rank: int
    run_id: int
    run: str
    stream: str
    seq: int
    captured_at: datetime | None
    similarity: float
    drift: float | None
    keyframe_seq: int
    run_dir: Path
    snapshot: str | None = None  # path of the frame's snapshot, or of the last one of its stream before it
    snapshot_seq: int | None = None
    thumbnail: str | None = None  # path of the exported thumbnail
    # The hit's stored thumbnail itself (its own, or its keyframe's), when a reader asked for it
    # (the web viewer serves it): bytes, so never in the JSON.
    thumbnail_jpeg: bytes | None = field(default=None, repr=False)

    # A hit as JSON, the same for `encoders search --format json` and the web viewer's /api/search.
    JSON_FIELDS = (
        "rank",
        "run_id",
        "run",
        "stream",
        "seq",
        "time",
        "similarity",
        "drift",
        "snapshot",
        "snapshot_seq",
        "thumbnail",
    )

    def to_json(self) -> dict[str, Any]:
        """JSON_FIELDS, the time in ISO 8601; ``snapshot`` and ``thumbnail`` are paths on this machine
        (the web viewer gives URLs of its own in their place)."""
        out = {k: v for k, v in self.as_dict().items() if k in self.JSON_FIELDS}
        out["time"] = self.captured_at.isoformat() if self.captured_at else None
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON_FIELDS and ``picture`` (the thumbnail if exported, else the snapshot), for tables and CSV."""
        return {
            "rank": self.rank,
            "run_id": self.run_id,
            "run": self.run,
            "stream": self.stream,
            "seq": self.seq,
            "time": self.captured_at,
            "similarity": self.similarity,
            "drift": self.drift,
            "snapshot": self.snapshot,
            "snapshot_seq": self.snapshot_seq,
            "thumbnail": self.thumbnail,
            "picture": self.thumbnail or self.snapshot,
        }
