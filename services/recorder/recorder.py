"""What the recorder does with each message, without sockets: files per stream, rows for the database.

Where a stream's files go:

- ``stream_dirs``: every stream in ``<run>/<stream>/``, and ``<run>/summary.json`` lists them all;
- otherwise the first stream seen writes in the run folder itself (the seed's layout) and
  any other stream in its own ``<run>/<stream>/``, so no file ever mixes two streams.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from encoders.services.recorder.config import RecorderConfig
from encoders.shared.messages import EndOfStream, Frame, Message, MetricsRecord, StreamStart
from encoders.shared.settings import mask_url

from .keyframes import Segmenter
from .rows import FrameRow, build_row
from .runfiles import (
    CONFIG_JSON,
    DRIFT_CSV,
    EMBEDDINGS_DIR,
    SNAPSHOTS_DIR,
    SUMMARY_JSON,
    DriftCsv,
    EmbeddingBatches,
    write_json,
)
from .snapshots import FrameCache, SnapshotPolicy, scene_snapshot_name, snapshot_name
from .summary import COUNT_KEYS, StreamSummary
from .thumbnails import ThumbnailPipeline, thumbnail_threads, wanted

log = logging.getLogger(__name__)

STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# A second stream's folder sits beside the first stream's own folders; never in them.
RESERVED_FOLDERS = {EMBEDDINGS_DIR, SNAPSHOTS_DIR, ".", ".."}
FRAME_CACHE_SIZE = 600


class RowSink(Protocol):
    def add(self, row: FrameRow) -> None: ...

    def set_model(self, model: str, dim: int) -> None: ...


def pipeline_settings(text: str) -> Any:
    """The pipeline's settings (a JSON string from the launcher), with secrets masked."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("--pipeline-config is not JSON; stored as text")
        value = text
    return mask_secrets(value)


def mask_secrets(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        if value and any(word in key.lower() for word in ("password", "secret", "token")):
            return "***"
        return mask_url(value)
    return value


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


class Recorder:
    def __init__(
        self, root: Path, *, run_id: int, config: dict[str, Any], rows: RowSink, settings: RecorderConfig | None = None
    ):
        self.root = root
        self.run_id = run_id
        self.config = config
        self.rows = rows
        self.settings = settings or RecorderConfig()
        self.streams: dict[str, StreamFiles] = {}
        self.ended: set[str] = set()
        self.model: tuple[str, int] | None = None
        self.counters: Counter = Counter()
        self._early: dict[str, FrameCache] = {}  # frames of streams with no record yet
        self._last_seq: dict[str, int] = {}
        self._thumbnails = ThumbnailPipeline(
            thumbnail_threads(self.settings.thumbnail_threads),
            self.settings.thumbnail_size,
            self.settings.thumbnail_quality,
            rows.add,
            self.counters,
        )
        self._write_config()

    # -- messages ------------------------------------------------------------------
    def on_message(self, msg: Message) -> None:
        if isinstance(msg, Frame):
            self.on_frame(msg)
        elif isinstance(msg, MetricsRecord):
            self.on_record(msg)
        elif isinstance(msg, EndOfStream):
            self.on_end(msg)
        elif isinstance(msg, StreamStart):
            log.info("stream %s starts at seq %d (%s)", msg.stream, msg.first_seq, mask_url(msg.url))
        else:
            self.counters["ignored_messages"] += 1

    def on_frame(self, frame: Frame) -> None:
        self.counters["frames"] += 1
        files = self.streams.get(frame.stream)
        if files is not None:
            files.on_frame(frame)
        elif frame.jpeg and STREAM_NAME.fullmatch(frame.stream):
            self._early.setdefault(frame.stream, FrameCache(self.settings.frame_cache)).put(frame.seq, frame.jpeg)

    def on_record(self, rec: MetricsRecord) -> None:
        norm_sq = self._acceptable(rec)
        if norm_sq is None:
            return
        last = self._last_seq.get(rec.stream)
        if last is not None and rec.seq <= last:
            # Records come in seq order, so this one was sent before (a replay): each frame is
            # recorded once, in the files as in the database.
            self.counters["repeated_records"] += 1
            log.warning("%s: dropped a record for seq %d, already past seq %d", rec.stream, rec.seq, last)
            return
        self._last_seq[rec.stream] = rec.seq
        self.counters["records"] += 1
        files = self.streams.get(rec.stream) or self._open_stream(rec.stream)
        snap, scene_snap, jpeg = files.on_record(rec)
        keyframe, keyframe_seq = files.segmenter.assign(
            rec.seq, rec.t_capture, rec.vector, scene_change=rec.scene_change, norm_sq=norm_sq
        )
        if rec.scene_change:
            self.counters["scene_changes"] += 1
        row = build_row(
            self.run_id, rec, snap, keyframe=keyframe, keyframe_seq=keyframe_seq, scene_snapshot_path=scene_snap
        )
        if not wanted(self.settings.thumbnails, keyframe):
            jpeg = None
        elif jpeg is None:
            # Its frame never came (the frames socket drops when the recorder falls behind) or came too early.
            self.counters["thumbnails_missing"] += 1
        self._thumbnails.add(row, jpeg)  # the row goes on to the database once its thumbnail is made

    def tick(self) -> None:
        """Hand on the rows whose thumbnails are done (called by the receive loop)."""
        self._thumbnails.release()

    def on_end(self, eos: EndOfStream) -> None:
        files = self.streams.get(eos.stream)
        if files is None:
            if not STREAM_NAME.fullmatch(eos.stream):
                self.counters["bad_stream_names"] += 1
                return
            files = self._open_stream(eos.stream)  # a stream that ended before any frame was embedded
        files.summary.end(eos.counts)
        self.ended.add(eos.stream)
        log.info(
            "stream %s ended at seq %d: %s",
            eos.stream,
            eos.last_seq,
            ", ".join(f"{k} {eos.counts.get(k)}" for k in COUNT_KEYS if k in eos.counts),
        )

    # -- periodic and final --------------------------------------------------------
    def flush_files(self) -> None:
        for files in self.streams.values():
            files.csv.flush()

    def close_files(self) -> None:
        self._thumbnails.close()  # every row on to the database writer first
        if not self.streams and not self.settings.stream_dirs:
            # Nothing arrived: still leave the seed's layout, empty, in the run folder.
            self.streams[""] = StreamFiles(
                None,
                self.root,
                self.root,
                snapshot_interval=self.settings.snapshot_interval,
                embedding_interval=self.settings.embedding_interval,
            )
        for name, files in self.streams.items():
            try:
                files.close()
            except OSError as exc:
                log.error("%s: could not finish its files in %s: %s", name, files.folder, exc)

    def write_summaries(self, run: dict[str, Any], db_rows: Counter) -> dict[str, Any]:
        """Every summary.json; returns the run folder's (also stored in the runs row)."""
        per_stream = {name: files.summary_dict(db_rows.get(name, 0)) for name, files in self.streams.items()}
        for name, files in self.streams.items():
            if files.folder != self.root:
                write_json(files.folder / SUMMARY_JSON, {**per_stream[name], "run": run})
        if self.settings.stream_dirs:
            top = {"run": run, "streams": per_stream, "totals": _totals(per_stream.values())}
        else:
            first = next(iter(self.streams))
            top = {
                **per_stream[first],
                "run": run,
                "other_streams": {n: f.rel for n, f in self.streams.items() if f.folder != self.root},
            }
        write_json(self.root / SUMMARY_JSON, top)
        return top

    # -- internals -----------------------------------------------------------------
    def _acceptable(self, rec: MetricsRecord) -> float | None:
        """The embedding's squared length if the record can be recorded; None (counted) if not."""
        if rec.stream not in self.streams and not STREAM_NAME.fullmatch(rec.stream):
            self.counters["bad_stream_names"] += 1
            log.warning(
                "dropped a record of stream %r: a stream name is 1-64 letters, digits, '_', '.', '-'", rec.stream[:80]
            )
            return None
        dim = int(rec.vector.size)
        if self.model is None:
            if dim == 0:
                self.counters["bad_vectors"] += 1
                return None
            self.model = (rec.model, dim)
            self.rows.set_model(rec.model, dim)
            self.config["model"] = {"name": rec.model, "dim": dim}
            self._write_config()
        elif dim != self.model[1]:
            self.counters["wrong_dim"] += 1
            if self.counters["wrong_dim"] == 1:
                log.error(
                    "dropped a %s record of %d dimensions: this run records %s, %d dimensions",
                    rec.model,
                    dim,
                    *self.model,
                )
            return None
        norm_sq = float(np.dot(rec.vector, rec.vector))  # any NaN or inf makes it so; one pass
        if not math.isfinite(norm_sq):
            self.counters["bad_vectors"] += 1
            log.warning("%s seq %d: dropped a record whose embedding is not finite", rec.stream, rec.seq)
            return None
        return norm_sq

    def _open_stream(self, stream: str) -> StreamFiles:
        if not self.settings.stream_dirs and not self.streams:
            folder = self.root
        else:
            folder = self.root / (stream if stream not in RESERVED_FOLDERS else f"stream_{stream}")
        files = StreamFiles(
            stream,
            folder,
            self.root,
            snapshot_interval=self.settings.snapshot_interval,
            embedding_interval=self.settings.embedding_interval,
            cache=self._early.pop(stream, None) or FrameCache(self.settings.frame_cache),
            segmenter=Segmenter(self.settings.keyframe_drift, self.settings.keyframe_max_s),
        )
        self.streams[stream] = files
        log.info("stream %s: files in %s", stream, folder)
        self._write_config()
        return files

    def _write_config(self) -> None:
        self.config["streams"] = {name: files.rel for name, files in self.streams.items() if name}
        write_json(self.root / CONFIG_JSON, self.config)
        for name, files in self.streams.items():
            if files.folder != self.root:
                write_json(files.folder / CONFIG_JSON, {**self.config, "streams": {name: "."}, "stream": name})


def _totals(summaries) -> dict[str, Any]:
    summaries = list(summaries)
    frames = {}
    for key in COUNT_KEYS:
        values = [s["frames"][key] for s in summaries if s["frames"].get(key) is not None]
        frames[key] = sum(values) if values else None
    return {
        "frames": frames,
        "records": sum(s["records"] for s in summaries),
        "snapshots": sum(s["snapshots"] for s in summaries),
        "npz_batches": sum(s["npz_batches"] for s in summaries),
        "db_rows": sum(s["db_rows"] for s in summaries),
    }
