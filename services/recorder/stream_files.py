"""One stream's files in the run folder: drift.csv, embeddings/*.npz, snapshots/*.jpg, and its summary.

Made fresh, a stream's files start empty (drift.csv with its header, no npz batch). A run
that is resumed or closed from the database has them rewritten from its rows: ``clear``
the old batches, make the files fresh, then ``restore`` each stored row in seq order, which
writes its line and its vector and brings the summary, the snapshot interval and the
keyframe segment to where the recorder was (``Recorder.resume`` in recorder.py, repair.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from encoders.shared.messages import MetricsRecord
from encoders.shared.storage.frames import StoredRow

from .keyframes import Segmenter
from .runfiles import DRIFT_CSV, EMBEDDINGS_DIR, SNAPSHOTS_DIR, DriftCsv, EmbeddingBatches
from .snapshots import WAIT_S, SnapshotPolicy, Want, Wants, scene_snapshot_name, snapshot_name
from .summary import StreamSummary

SNAPSHOT_RE = re.compile(r"(?:frame|scene)_(\d+)\.jpg")


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
        segmenter: Segmenter | None = None,
        snapshot_wait: float = WAIT_S,
    ):
        self.stream = stream
        self.folder = folder
        self.rel = folder.relative_to(root).as_posix() if folder != root else "."
        (folder / EMBEDDINGS_DIR).mkdir(parents=True, exist_ok=True)
        (folder / SNAPSHOTS_DIR).mkdir(exist_ok=True)
        self.csv = DriftCsv(folder / DRIFT_CSV)
        self.batches = EmbeddingBatches(folder / EMBEDDINGS_DIR, embedding_interval)
        self.policy = SnapshotPolicy(snapshot_interval)
        self.wants = Wants(wait_s=snapshot_wait)  # snapshots asked for (WantPictures), not yet come
        self.segmenter = segmenter or Segmenter(0.05, 5.0)
        self.summary = StreamSummary(stream or "")
        self.snapshots_missed = 0  # due (periodic or a scene change), but its picture never came
        self._snap_prefix = "" if self.rel == "." else self.rel + "/"

    @staticmethod
    def clear(folder: Path, last_stored: int) -> None:
        """Before a stream's files are rewritten from its rows: remove its npz batches, and the
        snapshots of frames past its last stored row (their rows never reached the database)."""
        for path in (folder / EMBEDDINGS_DIR).glob("batch_*.npz*"):
            path.unlink()
        for path in (folder / SNAPSHOTS_DIR).glob("*.jpg"):
            match = SNAPSHOT_RE.fullmatch(path.name)
            if match and int(match.group(1)) > last_stored:
                path.unlink()

    def on_record(self, rec: MetricsRecord, now: float, core: str = "") -> Want | None:
        """Write what this record adds: its line, its vector, its figures. Returns the snapshot it
        wants (its periodic one, its scene change's, or both), asked for by the caller; None if it
        wants none, or none can be asked (too many wait already: counted missed). ``core``: the life
        of the core the record belongs to, if it does not say."""
        periodic = self.policy.due(rec.t_capture)
        want = None
        if periodic or rec.scene_change:
            before = self.policy.last
            want = self.wants.add(rec.seq, rec.t_capture, now, periodic=periodic, scene=rec.scene_change, before=before)
            if want is None:
                self.snapshots_missed += 1
            elif periodic:
                self.policy.taken(rec.t_capture)  # tentatively: given back if its picture never comes
        self.csv.write(rec.t_capture, rec.seq, rec.similarity, rec.drift)
        self.batches.add(rec.vector, rec.t_capture, rec.seq)
        self.summary.add(rec, snapshot=False, core=core)  # counted once written (write_snapshot)
        return want

    def write_snapshot(self, want: Want, jpeg: bytes) -> tuple[str | None, str | None]:
        """The picture a want asked for came: its files written. Returns the paths (relative to the run)
        of its periodic snapshot and of its scene-change snapshot, as its row is to name them."""
        snap = scene_snap = None
        if want.periodic:
            name = snapshot_name(want.seq)
            (self.folder / SNAPSHOTS_DIR / name).write_bytes(jpeg)
            snap = f"{self._snap_prefix}{SNAPSHOTS_DIR}/{name}"
            self.summary.snapshots += 1
        if want.scene:
            # frame_*.jpg keep the seed's meaning (one per interval); a scene change between two gets its own.
            scene_snap = snap
            if scene_snap is None:
                name = scene_snapshot_name(want.seq)
                (self.folder / SNAPSHOTS_DIR / name).write_bytes(jpeg)
                scene_snap = f"{self._snap_prefix}{SNAPSHOTS_DIR}/{name}"
        return snap, scene_snap

    def missed(self, want: Want) -> None:
        """A want's picture never came (or could not be written): counted; a periodic one is due again."""
        self.snapshots_missed += 1
        if want.periodic:
            self.policy.missed(want.t_capture, want.before)

    def restore(self, row: StoredRow) -> None:
        """A stored row, rewritten into the files: its line, its vector, its figures, its snapshot's time,
        its segment."""
        self.csv.write(row.t_capture, row.seq, row.similarity, row.drift)
        self.batches.add(row.embedding, row.t_capture, row.seq)
        self.summary.add_values(row.seq, row.t_capture, row.similarity, row.drift, snapshot=bool(row.snapshot_path))
        if row.snapshot_path:
            self.policy.taken(row.t_capture)
        if row.keyframe:
            self.segmenter.resume(row.seq, row.t_capture, row.embedding)

    def close(self) -> None:
        """The final partial npz batch, and drift.csv closed (each attempted even if the other fails)."""
        try:
            self.batches.flush()
        finally:
            self.csv.close()

    def summary_dict(self, db_rows: int) -> dict[str, Any]:
        return self.summary.to_dict(npz_batches=self.batches.written, db_rows=db_rows)
