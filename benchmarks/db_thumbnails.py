"""What a thumbnail costs: the worker makes one of every frame it embeds (services/encoder/thumbnails.py),
and the record carries it to the recorder, which stores it with the row."""

from __future__ import annotations

import time

from encoders.services.encoder.config import EncoderConfig
from encoders.services.encoder.thumbnails import make_thumbnail

from .db_data import pisim_jpeg


def thumbnail_cost() -> dict:
    """A worker's CPU per thumbnail (the default size and quality), from a pisim frame at 640x480
    and at 1920x1080; and the thumbnail's size."""
    cfg = EncoderConfig()
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


def default_thumbnail() -> bytes:
    """The thumbnail of a 640x480 pisim frame, as every record carries one."""
    cfg = EncoderConfig()
    return make_thumbnail(pisim_jpeg(640, 480), cfg.thumbnail_size, cfg.thumbnail_quality)
