"""An MJPEG camera's frames into the ingest's main thread: read there, or handed over by a reader thread.

pisim (a process of its own, as the plumbing benchmark starts it) serves one 640x480 JPEG (about
53 KB) as fast as it is read. The
benchmark process reads it through the ingest's MJPEG feed (services/ingest/http_source.py) in
two ways, measured side by side, alternating, in one run:

- ``main thread``: the feed polled and read in the thread that takes the frames, as the ingest
  does since issue #21;
- ``reader thread``: the same feed read in a thread of its own, each frame handed to the main
  thread over the reader's inproc pipe (reader.py), as the ingest did before and still does for
  a video camera's JPEGs.

Figures: CPU-ms of the benchmark process (every thread) per frame taken, pisim not counted.
BENCH_FEED_FRAMES (5000): frames a measurement takes, after 200 of warm-up; BENCH_FEED_ROUNDS (3).
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterator

import zmq

from encoders.services.ingest.feed import drive
from encoders.services.ingest.http_source import HttpMjpegSource
from encoders.services.ingest.pictures import JpegFrame
from encoders.services.ingest.reader import CameraReader

from .bench_plumbing import sources

FRAMES = int(os.environ.get("BENCH_FEED_FRAMES", "5000"))
ROUNDS = int(os.environ.get("BENCH_FEED_ROUNDS", "3"))
WARMUP = 200


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class InThread:
    """The feed as a reader thread's source: its frames as ``frames()`` yields them (reader.py's Camera)."""

    def __init__(self, feed: HttpMjpegSource) -> None:
        self.feed = feed
        self.end_reason, self.ever_connected = "", False

    def frames(self) -> Iterator:
        for event in drive(self.feed):
            if isinstance(event, JpegFrame):
                self.ever_connected = True
                yield event

    def interrupt(self) -> None:
        self.feed.interrupt()


def taken(events: Iterator) -> float:
    """CPU-ms a frame of taking FRAMES frames from ``events``, after WARMUP."""
    start = 0.0
    for n, _ in enumerate(events, 1):
        if n == WARMUP:
            start = cpu_s()
        if n == WARMUP + FRAMES:
            return (cpu_s() - start) * 1000 / FRAMES
    raise RuntimeError("the camera's stream ended")


def main_thread(url: str) -> float:
    feed = HttpMjpegSource(url, connect_timeout=5, read_timeout=5)
    try:
        return taken(drive(feed))
    finally:
        feed.close()


def reader_thread(url: str) -> float:
    ctx = zmq.Context()
    stop = threading.Event()
    try:
        with CameraReader(ctx, InThread(HttpMjpegSource(url, connect_timeout=5, read_timeout=5)), stop) as reader:
            return taken(drive(reader))
    finally:
        stop.set()
        ctx.term()


def main() -> dict:
    got: dict[str, list[float]] = {"main thread": [], "reader thread": []}
    with sources({((640, 480), 0.0)}) as served:
        url = served[((640, 480), 0.0)].url
        for i in range(ROUNDS):
            order = [("main thread", main_thread), ("reader thread", reader_thread)]
            for name, measure in order if i % 2 == 0 else order[::-1]:
                got[name].append(measure(url))
    for name, values in got.items():
        print(f"{name:14s} CPU-ms a frame: " + ", ".join(f"{v:.4f}" for v in values))
    ratios = [m / r for m, r in zip(got["main thread"], got["reader thread"], strict=True)]
    print("main thread / reader thread, round by round: " + ", ".join(f"{r:.2f}" for r in ratios))
    return {"frames": FRAMES, "cpu_ms_per_frame": got, "ratios": ratios}
