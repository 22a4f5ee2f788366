"""What thumbnails cost the recorder: CPU per thumbnail, and records/s through the Recorder when
every record gets one."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from encoders.services.pisim.scene import SyntheticScene
from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.recorder import Recorder
from encoders.services.recorder.run import RecordedRun
from encoders.services.recorder.thumbnails import make_thumbnail, thumbnail_threads
from encoders.shared.messages import Frame, MetricsRecord
from encoders.shared.storage.connection import Database
from encoders.shared.storage.frames import FrameRow

from .db_data import DIM, FPS, T0, new_database, pisim_jpeg


def thumbnail_cost() -> dict:
    """The recorder's CPU per thumbnail (make_thumbnail with the default settings), from a pisim
    frame at 640x480 and at 1920x1080; and the thumbnail's size."""
    cfg = RecorderConfig()
    out = {}
    for w, h in ((640, 480), (1920, 1080)):
        frame = pisim_jpeg(w, h)
        thumb = make_thumbnail(frame, cfg.thumbnail_size, cfg.thumbnail_quality)
        n, start = 0, time.perf_counter()
        while n < 20 or time.perf_counter() - start < 2.0:
            make_thumbnail(frame, cfg.thumbnail_size, cfg.thumbnail_quality)
            n += 1
        out[f"{w}x{h}"] = {
            "ms_per_frame": (time.perf_counter() - start) / n * 1000,
            "thumbnail_bytes": len(thumb),
            "frame_bytes": len(frame),
        }
    return out


def thumbnail_rate(url: str, home: Path, records: int = 1500) -> dict:
    """Records/s through the Recorder (in this process, rows to a sink) when every one gets a
    thumbnail of its 640x480 frame: one thumbnail thread (what making them on the receive loop
    gave) against the default (one per core). The runs are claimed in a database of their own."""

    class Sink:
        def add(self, row: FrameRow) -> None:
            pass

        def set_model(self, model: str, dim: int) -> None:
            pass

    scene = SyntheticScene(640, 480, seed=1)
    frames = []
    for i in range(50):
        buf = io.BytesIO()
        scene.render(i / 10).save(buf, "JPEG", quality=80)
        frames.append(buf.getvalue())
    vectors = np.random.default_rng(0).standard_normal((records, DIM)).astype(np.float32)
    out: dict = {}
    db = Database.open(new_database(url, "thumbnail_rate"))
    for label, threads in (("1 thread", 1), ("default", RecorderConfig().thumbnail_threads)):
        run = RecordedRun.claim(db, runs_dir=home, run_dir=home / f"thumbnail-rate-{threads}", now=datetime.now(UTC))
        rec = Recorder(run, Sink(), RecorderConfig(thumbnail_threads=threads))
        start = time.perf_counter()
        for i in range(records):
            t = T0 + i / FPS
            rec.on_message(Frame("cam0", i, t, 640, 480, frames[i % len(frames)]))
            rec.on_message(
                MetricsRecord(
                    stream="cam0",
                    seq=i,
                    t_capture=t,
                    t_encoded=t,
                    worker="bench",
                    model="m",
                    similarity=0.99,
                    drift=0.01,
                    vector=vectors[i],
                )
            )
            rec.tick()
        rec.close_files()
        assert rec.counters["thumbnails"] == records
        out[label] = records / (time.perf_counter() - start)
    db.close()
    out["threads_default"] = thumbnail_threads(RecorderConfig().thumbnail_threads)
    return out
