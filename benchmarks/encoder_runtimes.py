"""The image tower in each runtime (issue 16), measured side by side within bench_encoder's run:

1. bare model: images/s of each runtime and precision on decoded frames, batch 8 and 32,
   PyTorch's model among them, in interleaved rounds (the best of each kept);
2. OpenVINO's ways of running: LATENCY hint with one request, THROUGHPUT hint with one
   synchronous request, THROUGHPUT with the async requests the runtime uses;
3. worker level: the worker's own overlap (decode a batch on the main thread while the model
   thread encodes the one before, batches of 8), without sockets or other processes;
   and how long a worker's start takes once the export is cached;
4. int8 fidelity: cosine to fp32 on camera-like photographs (pisim's scenes at 640x480, through
   the worker's decoding), and the top-10 overlap of image searches over a few thousand frames
   (queries embedded in fp32, as `encoders search` does, against frames embedded in int8).

Settings (environment): BENCH_SEARCH_FRAMES (frames searched, default 2000),
BENCH_RUNTIMES (default "onnx openvino": those to measure; a missing one fails the run).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from encoders.services.encoder.model import ClipImageEncoder, load_encoder
from encoders.services.encoder.model_thread import ModelThread
from encoders.services.encoder.preprocess import load_batch
from encoders.services.encoder.runtimes import ImageRuntime, select
from encoders.services.encoder.runtimes.export import cosines
from encoders.services.encoder.runtimes.openvino_runtime import OpenVinoTower
from encoders.services.pisim.scene import SyntheticScene

SEARCH_FRAMES = int(os.environ.get("BENCH_SEARCH_FRAMES", "2000"))
RUNTIMES = os.environ.get("BENCH_RUNTIMES", "onnx openvino").split()
# (runtime, precision): fp32 first (the default), then what is optional.
VARIANTS = [(r, p) for r in RUNTIMES for p in ("fp32", "int8")] + [("openvino", "bf16")] * ("openvino" in RUNTIMES)


def camera_jpegs(n: int, w: int = 640, h: int = 480, seed: int = 0) -> list[bytes]:
    """Frames as pisim serves them: 25 different scenes, frames 0.3 s apart (a cut every 4 s)."""
    scenes = [SyntheticScene(w, h, seed=seed * 1000 + s) for s in range(25)]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        scenes[i % 25].render(0.3 * (i // 25), i).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def decoded(enc: ClipImageEncoder, jpegs: list[bytes]) -> np.ndarray:
    arrays, _, bad, _ = load_batch(enc.pre, jpegs)
    assert not bad
    return np.stack(arrays)


def rate(fn, items: int, seconds: float) -> float:
    fn()
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * items / (time.perf_counter() - start)


def load_variants(model: str, pretrained: str, cache_dir: str, threads: int) -> dict[str, ClipImageEncoder]:
    """Each runtime and precision, exported into ``cache_dir`` (so the pipeline's workers find it);
    "ready in" is a first start: load, export, check, compile."""
    for runtime in RUNTIMES:
        if absent := select.missing(runtime):
            raise SystemExit(f"BENCH_RUNTIMES has {runtime}, which needs {', '.join(absent)}: pip install -e '.[test]'")
    out = {}
    for runtime, precision in VARIANTS:
        started = time.perf_counter()
        out[f"{runtime} {precision}"] = load_encoder(
            model, pretrained, "cpu", precision, runtime=runtime, cache_dir=cache_dir, threads=threads
        )
        print(f"  {runtime} {precision}: ready in {time.perf_counter() - started:.1f} s", flush=True)
    return out


def bare_rates(
    encoders: dict[str, ClipImageEncoder], torch_enc: ClipImageEncoder, frames: np.ndarray, seconds: float
) -> dict:
    """Images/s per runtime at batch 8 and 32, PyTorch's bare model among them: measured in 3
    interleaved rounds and the best kept: a neighbour's load on a shared machine only ever
    slows a measurement down, and falls on every runtime alike."""
    import torch

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # PyTorch's model on ready tensors, as its ceiling

    def torch_model(bs: int) -> None:
        with torch.inference_mode():
            torch_enc.model.encode_image(x[:bs])

    def runtime_call(tower: ImageRuntime) -> Callable[[int], object]:
        return lambda bs: tower.embed(frames[:bs])

    calls: dict[str, Callable[[int], object]] = {"torch fp32": torch_model}
    for label, enc in encoders.items():
        assert enc.runtime is not None
        calls[label] = runtime_call(enc.runtime)
    rounds: dict[str, dict[int, list[float]]] = {k: {8: [], 32: []} for k in calls}
    for _ in range(3):
        for label, fn in calls.items():
            for bs in (8, 32):
                rounds[label][bs].append(rate(lambda: fn(bs), bs, seconds / 3))
    out = {k: {bs: max(v) for bs, v in by_batch.items()} for k, by_batch in rounds.items()}
    for label, r in out.items():
        print(f"  bare model, {label}: batch 8 {r[8]:6.1f}, batch 32 {r[32]:6.1f} images/s", flush=True)
    return out


def start_times(model: str, pretrained: str, cache_dir: str, threads: int) -> dict[str, float]:
    """Seconds load_encoder takes once the export is cached (the second start of a worker)."""
    out = {}
    for runtime in ("torch", *RUNTIMES):
        started = time.perf_counter()
        load_encoder(model, pretrained, "cpu", "fp32", runtime=runtime, cache_dir=cache_dir, threads=threads)
        out[runtime] = time.perf_counter() - started
    print("  start, export cached: " + ", ".join(f"{k} {v:.1f} s" for k, v in out.items()), flush=True)
    return out


def openvino_modes(folder: Path, threads: int, frames: np.ndarray, seconds: float) -> dict:
    """LATENCY with one request, THROUGHPUT with one synchronous request, THROUGHPUT with async
    requests (what the worker uses): 3 interleaved rounds, the best kept."""
    latency = OpenVinoTower(folder, threads, "fp32", hint="LATENCY")
    request = latency.compiled.create_infer_request()
    throughput = OpenVinoTower(folder, threads, "fp32", hint="THROUGHPUT")
    one = throughput.compiled.create_infer_request()
    modes: dict[str, Callable[[np.ndarray], object]] = {
        "latency hint, 1 request": lambda x: request.infer({0: x}),
        "throughput hint, 1 synchronous request": lambda x: one.infer({0: x}),
        f"throughput hint, {throughput.requests} async requests": throughput.embed,
    }
    out: dict[int, dict[str, float]] = {8: {}, 32: {}}
    for _ in range(3):
        for bs in (8, 32):
            for mode, fn in modes.items():
                r = rate(lambda: fn(frames[:bs]), bs, seconds / 3)
                out[bs][mode] = max(r, out[bs].get(mode, 0.0))
    for bs in (8, 32):
        print(f"  openvino fp32, batch {bs}: " + ", ".join(f"{k} {v:.1f}" for k, v in out[bs].items()), flush=True)
    return out


def worker_rate(enc: ClipImageEncoder, jpegs: list[bytes], batch: int = 8) -> float:
    """Frames/s through the worker's decode-while-encoding overlap (worker.py), on one batch at a time."""
    model = ModelThread(enc)
    done, pos = 0, 0
    start = time.perf_counter()
    try:
        while done < len(jpegs):
            if pos < len(jpegs) and model.has_room():
                arrays, _, _, _ = load_batch(enc.pre, jpegs[pos : pos + batch])
                model.submit([], arrays)
                pos += batch
            for _, vectors, error in model.results(timeout=0.0 if model.has_room() and pos < len(jpegs) else 0.05):
                assert vectors is not None, error
                done += len(vectors)
    finally:
        model.close()
    return len(jpegs) / (time.perf_counter() - start)


def int8_fidelity(fp32: ClipImageEncoder, int8: dict[str, ClipImageEncoder], torch_enc: ClipImageEncoder) -> dict:
    """Cosine of int8 to fp32 per frame, and how many of fp32's top 10 an int8 database still returns."""
    jpegs = camera_jpegs(SEARCH_FRAMES, seed=1)
    queries = decoded(torch_enc, camera_jpegs(100, seed=2)[::2])  # 50 other frames as image queries
    q = torch_enc.embed_arrays(list(queries))  # search embeds queries with PyTorch
    frames = decoded(fp32, jpegs)
    reference = np.concatenate([fp32.embed_arrays(list(frames[i : i + 32])) for i in range(0, len(frames), 32)])
    top = np.argsort(-(q @ reference.T), axis=1)[:, :10]
    out = {}
    for label, enc in int8.items():
        got = np.concatenate([enc.embed_arrays(list(frames[i : i + 32])) for i in range(0, len(frames), 32)])
        cos = cosines(got, reference)
        top8 = np.argsort(-(q @ got.T), axis=1)[:, :10]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, top8, strict=True)])
        out[label] = {
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
            "top10_overlap": float(overlap),
            "frames": len(frames),
        }
        print(
            f"  {label} vs fp32 on {len(frames)} camera frames: cosine min {cos.min():.4f}, mean {cos.mean():.5f}; "
            f"top-10 overlap of 50 searches {overlap:.2f}",
            flush=True,
        )
    return out


def measure(
    model: str, pretrained: str, torch_enc: ClipImageEncoder, threads: int, seconds: float, cache_dir: str
) -> dict:
    """Everything above; ``cache_dir`` keeps the exports for the pipeline's workers."""
    encoders = load_variants(model, pretrained, cache_dir, threads)
    frames = decoded(torch_enc, camera_jpegs(32))
    result: dict = {
        "bare": bare_rates(encoders, torch_enc, frames, seconds),
        "start_s": start_times(model, pretrained, cache_dir, threads),
    }
    if "openvino" in RUNTIMES:
        tower = encoders["openvino fp32"].runtime
        assert isinstance(tower, OpenVinoTower)
        result["openvino_modes"] = openvino_modes(tower.folder, threads, frames, seconds)
    jpegs = camera_jpegs(160)
    result["worker"] = {}
    for _ in range(2):  # interleaved rounds, the best kept (as bare_rates)
        for label, enc in {"torch fp32": torch_enc, **encoders}.items():
            result["worker"][label] = max(worker_rate(enc, jpegs), result["worker"].get(label, 0.0))
    print(
        "  worker level (decode while encoding, batches of 8): "
        + ", ".join(f"{k} {v:.1f}" for k, v in result["worker"].items()),
        flush=True,
    )
    fp32 = encoders[f"{RUNTIMES[-1]} fp32"]
    expected = torch_enc.embed_arrays(list(frames))
    result["cosine_to_torch_fp32"] = {
        k: float(cosines(e.embed_arrays(list(frames)), expected).min()) for k, e in encoders.items()
    }
    result["int8"] = int8_fidelity(fp32, {k: e for k, e in encoders.items() if k.endswith("int8")}, torch_enc)
    return result
