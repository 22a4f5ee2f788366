"""Encoder benchmarks (issues 3 and 16), every figure of one comparison measured in this one run:

1. model ceiling: images/s of the bare model on preprocessed tensors, batch 1, 8, 32, 128;
2. seed-style baseline: one frame at a time, PIL decode, open_clip's preprocess, model;
3. on the CPU, the other runtimes (ONNX Runtime, OpenVINO; fp32, int8, bf16): their bare-model
   and worker-level rates, and int8's fidelity (encoder_runtimes.py);
4. pipeline end to end: pisim at unlimited rate -> ingest -> 1 and 2 encoder workers -> metrics,
   lossless, frames/s; on the CPU once per runtime and precision (ENCODERS_RUNTIME, ENCODERS_PRECISION);
5. real-time latency: pisim at 30 frames/s, capture-to-metrics latency p50/p95/p99 and drops;
6. decode + preprocess alone, per frame, 640x480 and 1920x1080.

Settings (environment): BENCH_MODEL (ViT-B-32), BENCH_PRETRAINED (none: random weights; speed
does not depend on them, int8's fidelity does), BENCH_DEVICE (auto), BENCH_PRECISION (auto),
BENCH_FRAMES (pipeline frames, default 480 on CPU, 6000 on CUDA), BENCH_SECONDS (per
measurement, default 6), BENCH_ROUNDS (of the CPU pipelines, default 2), and encoder_runtimes.py's.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import zmq
from PIL import Image

from benchmarks import encoder_runtimes
from benchmarks.encoder_table import print_table, ratios
from encoders.services.encoder.model import load_encoder
from encoders.services.encoder.preprocess import Preprocessor
from encoders.services.pisim.scene import SyntheticScene
from encoders.shared import zmqio
from encoders.shared.messages import EndOfStream, MetricsRecord, rows_of

MODEL = os.environ.get("BENCH_MODEL", "ViT-B-32")
PRETRAINED = os.environ.get("BENCH_PRETRAINED", "none")  # real weights: for int8's fidelity; speed is the same
DEVICE = os.environ.get("BENCH_DEVICE", "auto")
PRECISION = os.environ.get("BENCH_PRECISION", "auto")
SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))  # of the CPU pipelines, interleaved; the best kept
# A worker's ENCODERS_RUNTIME, ENCODERS_PRECISION and ENCODERS_MODEL_CACHE; None: PyTorch as configured.
Runtime = tuple[str, str, str] | None


def rate(fn, items_per_call: int, seconds: float = SECONDS, sync=lambda: None) -> float:
    """Calls per second x items, after one warm-up call, for at least ``seconds`` and 3 calls."""
    fn()
    sync()
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync()
    return calls * items_per_call / (time.perf_counter() - start)


def frame_jpeg(w: int, h: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    SyntheticScene(w, h, seed=seed).render(1.3).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def model_ceiling(enc, batches=(1, 8, 32, 128)) -> dict[int, float]:
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    out = {}
    for bs in batches:
        x = torch.randn(bs, 3, enc.pre.size, enc.pre.size).to(enc.device, enc.dtype)
        with torch.inference_mode():
            out[bs] = rate(lambda: enc.model.encode_image(x), bs, sync=sync)
        print(f"  model ceiling, batch {bs:>3}: {out[bs]:9.1f} images/s", flush=True)
    return out


def seed_baseline(enc, jpeg: bytes) -> float:
    """The seed's way: decode with PIL, open_clip's transform, one frame through the model."""

    def one():
        img = Image.open(io.BytesIO(jpeg)).convert("RGB")
        x = enc.reference_transform(img).unsqueeze(0).to(enc.device, enc.dtype)
        with torch.inference_mode():
            enc.model.encode_image(x).float().cpu()

    return rate(one, 1)


def preprocess_costs(enc) -> dict:
    out = {}
    for w, h in ((640, 480), (1920, 1080)):
        jpeg = frame_jpeg(w, h)
        full = Preprocessor(**{**enc.pre.__dict__, "fast_decode": False})
        row = {
            "fast_ms": 1000 / rate(lambda: enc.pre.load(jpeg), 1, seconds=2),
            "full_decode_ms": 1000 / rate(lambda: full.load(jpeg), 1, seconds=2),
            "open_clip_ms": 1000
            / rate(lambda: enc.reference_transform(Image.open(io.BytesIO(jpeg)).convert("RGB")), 1, seconds=2),
        }
        out[f"{w}x{h}"] = row
        print(
            f"  decode+preprocess {w}x{h}: fast {row['fast_ms']:.2f} ms, full-size decode "
            f"{row['full_decode_ms']:.2f} ms, open_clip's {row['open_clip_ms']:.2f} ms",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------
# The real pipeline, as separate processes on ZeroMQ, like the all-in-one command.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def pipeline(
    workers: int, threads: int, fps: float, frames: int, lossless: bool, batch_size: int, runtime: Runtime = None
):
    """``runtime``: (ENCODERS_RUNTIME, ENCODERS_PRECISION, ENCODERS_MODEL_CACHE) for the workers; None: torch."""
    tcp = "tcp://127.0.0.1:{}".format
    p = {k: free_port() for k in ("http", "core", "frames", "mpub")}
    name, precision, cache = runtime or ("torch", PRECISION, "")
    env = {
        **os.environ,
        "ENCODERS_MODEL": MODEL,
        "ENCODERS_PRETRAINED": PRETRAINED,
        "ENCODERS_DEVICE": DEVICE,
        "ENCODERS_PRECISION": precision,
        "ENCODERS_RUNTIME": name,
        "ENCODERS_MODEL_CACHE": cache,
        "ENCODERS_LOG_LEVEL": "WARNING",
    }
    procs = []

    def start(*args, extra=None):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "encoders", *args], env={**env, **(extra or {})}, stdout=subprocess.DEVNULL
            )
        )

    ctx: zmq.Context = zmq.Context.instance()
    sub = zmqio.open_socket(ctx, zmq.SUB, tcp(p["mpub"]), bind=False, subscribe=[b"metrics/", b"eos/"], linger=0)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            start(
                "metrics",
                "--core-bind",
                tcp(p["core"]),
                "--frames-bind",
                tcp(p["frames"]),
                "--metrics-bind",
                tcp(p["mpub"]),
                "--no-recorder",
                "--state-dir",
                str(Path(tmp) / "core"),
            )
            ready = [Path(tmp) / f"r{i}" for i in range(workers)]
            for i in range(workers):
                start(
                    "encode",
                    "--core",
                    tcp(p["core"]),
                    "--threads",
                    str(threads),
                    "--batch-size",
                    str(batch_size),
                    "--ready-file",
                    str(ready[i]),
                )
            deadline = time.monotonic() + 300
            while not all(r.exists() for r in ready):
                if time.monotonic() > deadline or any(pr.poll() is not None for pr in procs):
                    raise RuntimeError("encoder workers did not start")
                time.sleep(0.1)
            start("pisim", "--port", str(p["http"]), "--fps", str(fps), "--width", "640", "--height", "480")
            time.sleep(0.5)
            start(
                "ingest",
                "--stream",
                f"http://127.0.0.1:{p['http']}/stream.mjpg",
                "--core",
                tcp(p["core"]),
                "--max-frames",
                str(frames),
                *(["--lossless"] if lossless else []),
            )
            yield sub
        finally:
            sub.close(0)
            for pr in procs:
                pr.terminate()
            for pr in procs:
                try:
                    pr.wait(60)
                except subprocess.TimeoutExpired:
                    pr.kill()


def collect(sub, timeout_s: float = 600) -> tuple[list[tuple[float, MetricsRecord]], EndOfStream]:
    records = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.poll(1000):
            continue
        got, _ = zmqio.receive(sub, topic=True)
        for msg in rows_of(got) if got is not None else ():  # a Records: its records
            if isinstance(msg, MetricsRecord):
                records.append((time.time(), msg))
            elif isinstance(msg, EndOfStream):
                return records, msg
    raise RuntimeError("the pipeline did not finish in time")


def pipeline_throughput(workers: int, threads: int, frames: int, batch_size: int, runtime: Runtime = None) -> float:
    with pipeline(workers, threads, 0, frames, lossless=True, batch_size=batch_size, runtime=runtime) as sub:
        records, eos = collect(sub)
    assert eos.counts["embedded"] == frames, eos.counts
    # Steady state: skip two batches while every stage fills. Records leave metrics a batch
    # at a time, so the rate is taken over many batches (frames >= 20 batches).
    assert frames >= 20 * batch_size, "too few frames for a steady-state rate"
    done = [r.t_metrics for _, r in records][2 * batch_size :]
    fps = (len(done) - 1) / (done[-1] - done[0])
    label = f"{runtime[0]} {runtime[1]}" if runtime else "torch"
    print(f"  pipeline, {label}, {workers} worker(s) x {threads} thread(s), lossless: {fps:9.1f} frames/s", flush=True)
    return fps


def realtime_latency(workers: int, threads: int, seconds: float, batch_size: int) -> dict:
    frames = int(30 * seconds)
    with pipeline(workers, threads, fps=30, frames=frames, lossless=False, batch_size=batch_size) as sub:
        records, eos = collect(sub)
    lat = np.array([(r.t_metrics - r.t_capture) * 1000 for _, r in records[10:]])
    out = {
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "published": eos.counts["published"],
        "embedded": eos.counts["embedded"],
        "dropped": eos.counts["dropped"],
    }
    print(
        f"  real time at 30 frames/s: capture->metrics p50 {out['p50_ms']:.0f} ms, p95 {out['p95_ms']:.0f} ms, "
        f"p99 {out['p99_ms']:.0f} ms; {out['dropped']} of {out['published']} frames dropped",
        flush=True,
    )
    return out


def main() -> dict:
    torch.manual_seed(0)
    enc = load_encoder(MODEL, PRETRAINED, DEVICE, PRECISION)
    cuda = enc.device.type == "cuda"
    cores = os.cpu_count() or 1
    batch_size = 128 if cuda else 8  # 8: the worker's automatic size on the CPU (larger gains nothing there)
    frames = int(os.environ.get("BENCH_FRAMES", 6000 if cuda else 60 * batch_size))
    print(f"model {enc.name} on {enc.device} ({enc.dtype}), {cores} cores", flush=True)

    result: dict = {"model": MODEL, "device": str(enc.device), "dtype": str(enc.dtype)}
    result["decode_preprocess"] = preprocess_costs(enc)
    result["model_ceiling"] = model_ceiling(enc)
    result["seed_baseline_fps"] = seed_baseline(enc, frame_jpeg(640, 480))
    print(
        f"  seed-style baseline (one frame at a time, PIL + open_clip transform): "
        f"{result['seed_baseline_fps']:.1f} frames/s",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-model-cache-") as cache:
        if not cuda:  # the runtimes run on the CPU; their exports stay in ``cache`` for the pipeline's workers
            result["runtimes"] = encoder_runtimes.measure(MODEL, PRETRAINED, enc, cores, SECONDS, cache)
        del enc  # the pipeline's workers need the memory and the cores
        if cuda:
            torch.cuda.empty_cache()
        result["pipeline_fps"] = pipelines(cuda, cores, frames, batch_size, cache)
    try:
        result["realtime_30fps"] = realtime_latency(1, cores if not cuda else 4, 20, batch_size if not cuda else 32)
    except Exception as exc:  # as a failed pipeline: the figures above stand without it
        print(f"  real time: FAILED ({type(exc).__name__}: {exc})", flush=True)
    result["ratios"] = ratios(result, torch.cuda.device_count() if cuda else 0)
    print_table(result)
    return result


def pipelines(cuda: bool, cores: int, frames: int, batch_size: int, cache: str) -> dict[str, dict[str, float]]:
    """Lossless frames/s with 1 worker (all cores) and 2 (half each), per runtime on the CPU.

    On the CPU, ROUNDS interleaved rounds (torch, each runtime, torch, ...) and the best of
    each kept: a neighbour's load on a shared machine only ever slows a run down.
    """
    two = (2, max(1, cores // 2)) if not cuda else (2, 4)
    variants: dict[str, Runtime] = {"torch": None}
    if not cuda:
        variants.update(
            {f"{r} {p}": (r, p, cache) for r, p in encoder_runtimes.VARIANTS if p != "bf16"}  # bf16: bare figures
        )
    out: dict[str, dict[str, float]] = {}
    for _ in range(1 if cuda else ROUNDS):
        for label, runtime in variants.items():
            try:
                runs = {
                    "1 worker": pipeline_throughput(1, cores if not cuda else 4, frames, batch_size, runtime),
                    "2 workers": pipeline_throughput(two[0], two[1], frames, batch_size, runtime),
                }
                out[label] = {k: max(v, out.get(label, {}).get(k, 0.0)) for k, v in runs.items()}
            except Exception as exc:  # the bare and worker-level figures stand without it
                print(f"  pipeline, {label}: FAILED ({type(exc).__name__}: {exc})", flush=True)
    return out
