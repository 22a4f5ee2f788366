"""A stand-in encoder worker for the plumbing benchmark, for a version of the code without
ENCODERS_RUNTIME=none (commit d031ce1): a small process that speaks that version's protocol and
answers every Frame with the vector ENCODERS_RUNTIME=none would give it.

Run as a script with the version's own code first on PYTHONPATH (its ``encoders.shared.messages``
and ``keys``), never as part of the benchmarks package:

    python benchmarks/plumbing_standin.py --core tcp://127.0.0.1:5556 --name w0 --ready FILE

It does a worker's work on each frame as this commit's ``--runtime none`` does (embedder.NoModel,
the worker): decode at ViT-B-32's 224 px (draft mode, bicubic resize, centre crop), the picture's
levels, a 160 px thumbnail at quality 70, a unit vector seeded by a hash of the JPEG; a JPEG that
does not decode is Skipped (with this commit's protocol 3, a batch's results go as one Results, as
its worker sends them). So the two versions' workers cost the same, and what differs between
the runs is the rest of the pipeline. It also moves messages as the worker does: it gathers
frames into batches of up to 8 (waiting up to 5 ms for one to fill) and sends a batch's results
together, so the core and the others see the same bursts (answering each frame at once, as a first
version of this did, made every other process of d031ce1's pipeline busier per frame, and its
throughput higher, than this commit's with its real workers: not a comparison of the core).
Its session: Hello (``capacity`` 16, as a worker with batches of 8 offers; ``dim`` where that
version's Hello has one), Heartbeat when it has sent nothing for a heartbeat, Hello again when
refused with ``rejoin``, and on the core's Stop or SIGTERM the frames held finished, then Bye.
The file ``--ready`` is created once the core has welcomed it. With ``--light`` it does no picture
work, as ``--runtime none`` with ENCODERS_NONE_DECODE=0: a JPEG's markers checked, its vector, no
levels and no thumbnail (the benchmark's BENCH_PLUMBING_WORKERS=light).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from PIL import Image

from encoders.shared import keys, messages
from encoders.shared.messages import Bye, Embedding, Frame, Heartbeat, Hello, Refused, Skipped, Stop, Welcome

SIZE, DIM, THUMB, QUALITY = 224, 512, 160, 70
BATCH, BATCH_WAIT_S = 8, 0.005  # the worker's on the CPU: batches of 8, 5 ms to fill one
CAPACITY = 2 * BATCH  # frames held: a batch being encoded and one being gathered, as the worker offers
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Protocol 3 (this commit's code) sends a batch's results as one Results, of Embedding and Skipped
# rows; d031ce1's sends each as a message of its own.
BATCHES = hasattr(messages, "Results")


def picture(jpeg: bytes) -> np.ndarray:
    """As the worker's Preprocessor.load for ViT-B-32: decoded at a reduced DCT scale, resized, cropped."""
    img: Image.Image = Image.open(io.BytesIO(jpeg))
    if img.format == "JPEG":
        img.draft("RGB", (SIZE, SIZE))
    img.load()
    img = img.convert("RGB")
    w, h = img.size
    new_w, new_h = (SIZE, int(SIZE * h / w)) if w <= h else (int(SIZE * w / h), SIZE)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = round((new_w - SIZE) / 2.0), round((new_h - SIZE) / 2.0)
    return np.asarray(img.crop((left, top, left + SIZE, top + SIZE)))


def levels(rgb: np.ndarray) -> tuple[float, float]:
    sample = rgb[::4, ::4].reshape(-1, 3).astype(np.float32)
    return float(np.clip((sample @ LUMA).mean(), 0.0, 255.0)), float(min(255.0, sample.std(axis=0).max()))


def thumbnail(jpeg: bytes) -> bytes:
    source: Image.Image = Image.open(io.BytesIO(jpeg))
    if source.format == "JPEG":
        scale = THUMB / max(source.size)
        source.draft("RGB", (int(np.ceil(source.size[0] * scale)), int(np.ceil(source.size[1] * scale))))
    img = source.convert("RGB")
    img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def vector(jpeg: bytes) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(jpeg, digest_size=16).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(DIM, dtype=np.float32)
    return v / np.float32(np.linalg.norm(v))


def whole_jpeg(data: bytes) -> bool:
    """A JPEG not decoded (--light), checked for its start and end markers, as embedder.JpegBytes does
    (with shared/jpeg.py, which d031ce1, whose code this runs with, does not have)."""
    return data.startswith(b"\xff\xd8") and b"\xff\xd9" in data[-32:]


def answer(frame: Frame, name: str, model: str, light: bool = False) -> Embedding | Skipped:
    if light:  # as ENCODERS_NONE_DECODE=0: no picture work, no levels, no thumbnail
        if not whole_jpeg(frame.jpeg):
            return Skipped(frame.stream, frame.seq, name, "corrupt JPEG: not a whole JPEG")
        return Embedding(frame.stream, frame.seq, frame.t_capture, name, model, time.time(), vector(frame.jpeg))
    try:
        rgb = picture(frame.jpeg)
    except Exception as exc:  # Pillow raises several types for bad data
        return Skipped(frame.stream, frame.seq, name, f"corrupt JPEG: {exc}"[:4096])
    brightness, contrast = levels(rgb)
    return Embedding(
        stream=frame.stream,
        seq=frame.seq,
        t_capture=frame.t_capture,
        worker=name,
        model=model,
        t_encoded=time.time(),
        vector=vector(frame.jpeg),
        thumbnail=thumbnail(frame.jpeg),
        brightness=brightness,
        contrast=contrast,
    )


class StandIn:
    """The worker's session and its loop: frames gathered into batches as the worker gathers them."""

    def __init__(self, core: str, name: str, ready: str, light: bool = False) -> None:
        self.name, self.ready, self.model, self.light = name, ready, f"none/{DIM}", light
        # This commit's Hello says the vectors' length; d031ce1's had no such field.
        extra: dict[str, Any] = {"dim": DIM} if "dim" in {f.name for f in dataclasses.fields(Hello)} else {}
        self.hello = Hello("worker", name, messages.PROTOCOL, capacity=CAPACITY, model=self.model, **extra)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        curve = keys.client(os.environ.get("ENCODERS_KEYS", ""), "worker")
        if curve is not None:
            curve.apply(self.sock)
        self.sock.connect(core)
        self.held: deque[Frame] = deque()
        self.stopping: list[str] = []
        self.last_sent, self.heartbeat_s, self.joined = 0.0, 1.0, False

    def send(self, msg: messages.Message) -> None:
        self.sock.send_multipart(messages.encode(msg), copy=False)
        self.last_sent = time.monotonic()

    def receive(self, timeout_s: float) -> None:
        """Everything the core sent, waiting up to ``timeout_s`` for the first; a heartbeat when due."""
        wait_ms = int(timeout_s * 1000)
        while self.sock.poll(wait_ms):
            wait_ms = 0
            try:
                msg = messages.decode(self.sock.recv_multipart(copy=False))
            except messages.DecodeError:
                continue
            if isinstance(msg, Frame):
                self.held.append(msg)
            elif isinstance(msg, Welcome):
                self.joined, self.heartbeat_s = True, msg.heartbeat_s
                if self.ready:
                    Path(self.ready).touch()
            elif isinstance(msg, Stop):
                self.stopping.append(msg.reason or "stop")
            elif isinstance(msg, Refused):
                if not (msg.rejoin or msg.retry):
                    raise SystemExit(f"refused: {msg.reason}")
                self.joined = False
                self.held.clear()  # a new life: the core gave them up
                time.sleep(0.2)
                self.send(self.hello)
        if self.joined and time.monotonic() - self.last_sent >= self.heartbeat_s:
            self.send(Heartbeat())

    def batch(self) -> None:
        """As the worker's encode_next and send_results: gather up to BATCH frames (waiting up to
        BATCH_WAIT_S for it to fill), do each one's work, send the results together."""
        deadline = time.monotonic() + BATCH_WAIT_S
        while len(self.held) < BATCH and (left := deadline - time.monotonic()) > 0:
            self.receive(left)
        frames = [self.held.popleft() for _ in range(min(BATCH, len(self.held)))]
        results = [answer(f, self.name, self.model, self.light) for f in frames]
        if BATCHES:  # protocol 3: one Results for the batch, as the worker sends it
            for batch in messages.Results.many(results):
                self.send(batch)
        else:
            for result in results:
                self.send(result)  # type: ignore[arg-type]

    def run(self) -> None:
        self.send(self.hello)
        while not self.stopping or self.held:  # on a Stop, what is held is finished first
            self.receive(0 if self.held else 0.1)
            if self.held:
                self.batch()
        self.send(Bye(self.stopping[0]))
        self.sock.close()
        self.ctx.term()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--core", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--ready", default="")
    parser.add_argument("--light", action="store_true", help="no picture work, as ENCODERS_NONE_DECODE=0")
    args = parser.parse_args()
    worker = StandIn(args.core, args.name, args.ready, args.light)
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.append("SIGTERM"))
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
