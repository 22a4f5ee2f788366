"""The run folder on disk, in the seed's layout: its JSON files written and read whole (``write_json``,
``read_json``), drift.csv and the npz batches, and the function that reads a run back.

    runs/YYYYMMDD_HHMMSS/
        config.json  drift.csv  summary.json
        embeddings/batch_0000.npz ...   (embeddings (N,D) float32, timestamps (N,) float64, indices (N,) int64)
        snapshots/frame_000000.jpg ...   (one every snapshot interval of capture time)
        snapshots/scene_000123.jpg ...   (scene changes between those)

With several cameras each stream has that layout in its own subfolder; see recorder.py.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_JSON = "config.json"
DRIFT_CSV = "drift.csv"
SUMMARY_JSON = "summary.json"
EMBEDDINGS_DIR = "embeddings"
SNAPSHOTS_DIR = "snapshots"
DRIFT_HEADER = ("timestamp", "frame", "similarity", "drift")
_BATCH_RE = re.compile(r"batch_(\d+)\.npz")


def write_json(path: Path, obj: Any) -> None:
    """Write through a temporary file, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class DriftCsv:
    """drift.csv: one row per embedded frame.

    ``timestamp`` is the frame's capture time in epoch seconds with 6 decimals (UTC, no time
    zone to get wrong); ``frame`` its seq; similarity and drift are empty for a stream's
    first frame.

    Buffered by the file object; ``flush()`` is called about once a second by the recorder,
    so a reader (or a crash) is never far behind.
    """

    def __init__(self, path: Path):
        self._file = open(path, "w", newline="")  # noqa: SIM115 - open for the run, closed by close()
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(DRIFT_HEADER)

    def write(self, t_capture: float, seq: int, similarity: float | None, drift: float | None) -> None:
        self._writer.writerow(
            (
                f"{t_capture:.6f}",
                seq,
                "" if similarity is None else repr(float(similarity)),
                "" if drift is None else repr(float(drift)),
            )
        )

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class EmbeddingBatches:
    """embeddings/batch_NNNN.npz: one file every ``interval`` embeddings, and the rest at close."""

    def __init__(self, folder: Path, interval: int):
        self.folder = folder
        self.interval = interval
        self.written = 0  # files
        self.rows_written = 0
        self._vectors: list[np.ndarray] = []
        self._times: list[float] = []
        self._seqs: list[int] = []

    def add(self, vector: np.ndarray, t_capture: float, seq: int) -> Path | None:
        """Keep one embedding; returns the file written when this one completed a batch."""
        self._vectors.append(vector)
        self._times.append(t_capture)
        self._seqs.append(seq)
        if len(self._vectors) >= self.interval:
            return self.flush()
        return None

    def flush(self) -> Path | None:
        """Write what is held (the final partial batch at the end of a run)."""
        if not self._vectors:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"batch_{self.written:04d}.npz"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(
                f,
                embeddings=np.stack(self._vectors).astype(np.float32, copy=False),
                timestamps=np.asarray(self._times, dtype=np.float64),
                indices=np.asarray(self._seqs, dtype=np.int64),
            )
        os.replace(tmp, path)
        self.written += 1
        self.rows_written += len(self._vectors)
        self._vectors, self._times, self._seqs = [], [], []
        return path


# --------------------------------------------------------------------------------------
# Reading a run back


def run_streams(run_dir: str | os.PathLike) -> dict[str, Path]:
    """The streams a run folder holds, name -> folder with their embeddings/.

    config.json lists them (``streams``: name -> folder relative to the run); a seed run,
    or a run folder without that list, holds one stream in the folder itself ("").
    """
    root = Path(run_dir)
    streams: dict[str, Path] = {}
    try:
        listed = json.loads((root / CONFIG_JSON).read_text()).get("streams") or {}
    except (OSError, ValueError, AttributeError):
        listed = {}
    for name, rel in listed.items():
        streams[name] = root / rel if rel not in ("", ".") else root
    if not streams:
        if (root / EMBEDDINGS_DIR).is_dir():
            streams[""] = root
        for sub in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            if (sub / EMBEDDINGS_DIR).is_dir():
                streams[sub.name] = sub
    return streams


def load_run_embeddings(
    run_dir: str | os.PathLike, stream: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run's embeddings (N, D) float32, capture timestamps (N,) float64 and frame indices (N,) int64.

    ``stream`` picks one camera of a run that recorded several; it may be left out when the
    run holds only one.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no run folder {root}")
    streams = run_streams(root)
    if stream is None:
        if len(streams) > 1:
            raise ValueError(f"{root} holds several streams ({', '.join(sorted(streams))}); pass stream= one of them")
        folder = next(iter(streams.values()), root)
    elif stream in streams:
        folder = streams[stream]
    else:
        raise ValueError(f"{root} has no stream {stream!r}; it holds: {', '.join(sorted(streams)) or 'none'}")
    files = sorted(
        (int(m.group(1)), p)
        for p in (folder / EMBEDDINGS_DIR).glob("batch_*.npz")
        if (m := _BATCH_RE.fullmatch(p.name))
    )
    if not files:
        raise FileNotFoundError(f"{folder} has no embeddings ({EMBEDDINGS_DIR}/batch_*.npz)")
    embeddings, timestamps, indices = [], [], []
    for _, path in files:
        with np.load(path) as data:
            embeddings.append(data["embeddings"].astype(np.float32, copy=False))
            timestamps.append(data["timestamps"].astype(np.float64, copy=False))
            indices.append(data["indices"].astype(np.int64, copy=False))
    return np.concatenate(embeddings), np.concatenate(timestamps), np.concatenate(indices)
