"""A stand-in encoder worker for the plumbing benchmark, for a version of the code without
ENCODERS_RUNTIME=none (commit d031ce1): a small process that speaks that version's protocol and
answers every Frame with the vector ENCODERS_RUNTIME=none would give it.

Run as a script with the version's own code first on PYTHONPATH (its ``encoders.shared.messages``
and ``keys``), never as part of the benchmarks package:

    python benchmarks/plumbing_standin.py --core tcp://127.0.0.1:5556 --name w0 --ready FILE

It does a worker's work on each frame as this commit's ``--runtime none`` does (embedder.NoModel,
the worker): decode at ViT-B-32's 224 px (draft mode, bicubic resize, centre crop), the picture's
levels, a 160 px thumbnail at quality 70, a unit vector seeded by a hash of the JPEG; a JPEG that
does not decode is Skipped. So the two versions' workers cost the same, and what differs between
the runs is the rest of the pipeline. Its session: Hello (``capacity`` 16, as a worker with
batches of 8 offers; ``dim`` where that version's Hello has one), Heartbeat when it has sent
nothing for a heartbeat, Hello again when refused with ``rejoin``, Bye on the core's Stop or on
SIGTERM. The file ``--ready`` is created once the core has welcomed it.
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
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from PIL import Image

from encoders.shared import keys, messages
from encoders.shared.messages import Bye, Embedding, Frame, Heartbeat, Hello, Refused, Skipped, Stop, Welcome

SIZE, DIM, THUMB, QUALITY, CAPACITY = 224, 512, 160, 70, 16
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


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


def answer(frame: Frame, name: str, model: str) -> messages.Message:
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--core", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--ready", default="")
    args = parser.parse_args()
    model = f"none/{DIM}"
    # This commit's Hello says the vectors' length; d031ce1's had no such field.
    extra: dict[str, Any] = {"dim": DIM} if "dim" in {f.name for f in dataclasses.fields(Hello)} else {}
    hello = Hello("worker", args.name, messages.PROTOCOL, capacity=CAPACITY, model=model, **extra)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    curve = keys.client(os.environ.get("ENCODERS_KEYS", ""), "worker")
    if curve is not None:
        curve.apply(sock)
    sock.connect(args.core)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    last_sent, heartbeat_s, joined = 0.0, 1.0, False

    def send(msg: messages.Message) -> None:
        nonlocal last_sent
        sock.send_multipart(messages.encode(msg), copy=False)
        last_sent = time.monotonic()

    send(hello)
    while not stopping:
        if sock.poll(100):
            try:
                msg = messages.decode(sock.recv_multipart(copy=False))
            except messages.DecodeError:
                continue
            if isinstance(msg, Frame):
                send(answer(msg, args.name, model))
            elif isinstance(msg, Welcome):
                joined, heartbeat_s = True, msg.heartbeat_s
                if args.ready:
                    Path(args.ready).touch()
            elif isinstance(msg, Stop):
                stopping.append(msg.reason or "stop")
            elif isinstance(msg, Refused):
                if not (msg.rejoin or msg.retry):
                    print(f"refused: {msg.reason}", file=sys.stderr)
                    return 2
                joined = False
                time.sleep(0.2)
                send(hello)
        if joined and time.monotonic() - last_sent >= heartbeat_s:
            send(Heartbeat())
    send(Bye(stopping[0]))
    sock.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
