"""One stream's files in the run folder: drift.csv, embeddings/*.npz, snapshots/*.jpg, and its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from encoders.shared.messages import Frame, MetricsRecord

from .keyframes import Segmenter
from .runfiles import DRIFT_CSV, EMBEDDINGS_DIR, SNAPSHOTS_DIR, DriftCsv, EmbeddingBatches
from .snapshots import FrameCache, SnapshotPolicy, scene_snapshot_name, snapshot_name
from .summary import StreamSummary

FRAME_CACHE_SIZE = 600


class StreamFiles:
    """One stream's drift.csv, embeddings/, snapshots/ and summary, in one folder; and its keyframe segments."""

    def __init__(
        self,
        stream: str | None,
        folder: Path,
        root: Path,
        *,
        snapshot_interval: float,
        embedding_interval: int,
        cache: FrameCache | None = None,
        segmenter: Segmenter | None = None,
    ):
        self.stream = stream
        self.folder = folder
        self.rel = folder.relative_to(root).as_posix() if folder != root else "."
        (folder / EMBEDDINGS_DIR).mkdir(parents=True, exist_ok=True)
        (folder / SNAPSHOTS_DIR).mkdir(exist_ok=True)
        self.csv = DriftCsv(folder / DRIFT_CSV)
        self.batches = EmbeddingBatches(folder / EMBEDDINGS_DIR, embedding_interval)
        self.policy = SnapshotPolicy(snapshot_interval)
        self.cache = cache if cache is not None else FrameCache(FRAME_CACHE_SIZE)
        self.segmenter = segmenter or Segmenter(0.05, 5.0)
        self.summary = StreamSummary(stream or "")
        self._snap_prefix = "" if self.rel == "." else self.rel + "/"

    def on_frame(self, frame: Frame) -> None:
        # Every frame: whether it gets a snapshot or a thumbnail is known only when its record comes.
        if frame.jpeg:
            self.cache.put(frame.seq, frame.jpeg)

    def on_record(self, rec: MetricsRecord) -> tuple[str | None, str | None, bytes | None]:
        """Write what this record adds. Returns the paths (relative to the run) of its periodic
        snapshot and of its scene-change snapshot, if it got them, and its JPEG if at hand."""
        snap = scene_snap = None
        jpeg = self.cache.take(rec.seq)
        if jpeg is not None and self.policy.due(rec.t_capture):
            name = snapshot_name(rec.seq)
            (self.folder / SNAPSHOTS_DIR / name).write_bytes(jpeg)
            self.policy.taken(rec.t_capture)
            snap = f"{self._snap_prefix}{SNAPSHOTS_DIR}/{name}"
        if jpeg is not None and rec.scene_change:
            # frame_*.jpg keep the seed's meaning (one per interval); a scene change between two gets its own.
            scene_snap = snap
            if scene_snap is None:
                name = scene_snapshot_name(rec.seq)
                (self.folder / SNAPSHOTS_DIR / name).write_bytes(jpeg)
                scene_snap = f"{self._snap_prefix}{SNAPSHOTS_DIR}/{name}"
        self.csv.write(rec.t_capture, rec.seq, rec.similarity, rec.drift)
        self.batches.add(rec.vector, rec.t_capture, rec.seq)
        self.summary.add(rec, snapshot=snap is not None)
        return snap, scene_snap, jpeg

    def close(self) -> None:
        """The final partial npz batch, and drift.csv closed (each attempted even if the other fails)."""
        try:
            self.batches.flush()
        finally:
            self.csv.close()

    def summary_dict(self, db_rows: int) -> dict[str, Any]:
        return self.summary.to_dict(npz_batches=self.batches.written, db_rows=db_rows)
