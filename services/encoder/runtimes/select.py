"""ENCODERS_RUNTIME and ENCODERS_PRECISION per runtime: which one runs, and putting it in place.

``auto`` follows what was measured (benchmarks/RESULTS.md, ViT-B-32, 2 CPU cores, images/s
at batch 8): on the CPU OpenVINO (fp32 48-50, bf16 87, int8 95) and ONNX Runtime (fp32 48,
int8 88) both run the image tower about twice as fast as PyTorch (fp32 23, bf16 78), so
auto takes OpenVINO if installed, else ONNX Runtime, else PyTorch; on CUDA it takes
PyTorch (these runtimes are installed here for the CPU only).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .. import model as model_module
from . import ImageRuntime

if TYPE_CHECKING:
    from ..model import ClipImageEncoder

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx", "openvino")
# What each runtime needs beyond torch and open_clip: ONNX export needs onnx and onnxscript.
PACKAGES = {"onnx": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino", "onnx", "onnxscript")}
PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}


def missing(runtime: str) -> list[str]:
    """The packages ``runtime`` needs that are not installed."""
    return [p for p in PACKAGES.get(runtime, ()) if importlib.util.find_spec(p) is None]


def choose(runtime: str, device: str, precision: str, cuda_available: bool) -> str:
    """torch, onnx or openvino, for ``runtime`` (auto included); ModelLoadError for what cannot run."""
    error = model_module.ModelLoadError
    if runtime not in RUNTIMES:
        raise error(f"ENCODERS_RUNTIME must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "auto":
        on_cuda = device.startswith("cuda") or (device == "auto" and cuda_available)
        if on_cuda:
            chosen, why = "torch", "the model runs on CUDA"
        else:
            chosen = next(
                (r for r in ("openvino", "onnx") if not missing(r) and precision in (*PRECISIONS[r], "auto")),
                "torch",
            )
            why = (
                "the fastest installed on the CPU (measured: OpenVINO, then ONNX Runtime, about 2x PyTorch)"
                if chosen != "torch"
                else "neither OpenVINO nor ONNX Runtime is installed (pip install 'encoders[openvino]')"
            )
        log.info("ENCODERS_RUNTIME=auto: %s, as %s", chosen, why)
        runtime = chosen
    if runtime == "torch":
        if precision == "int8":
            raise error(
                "ENCODERS_PRECISION=int8 runs with ENCODERS_RUNTIME=onnx or openvino (PyTorch's dynamic int8 "
                "measured slower than its fp32)"
            )
        return runtime
    if device.startswith("cuda"):
        raise error(f"ENCODERS_RUNTIME={runtime} runs on the CPU; use ENCODERS_DEVICE=cpu or ENCODERS_RUNTIME=torch")
    if absent := missing(runtime):
        raise error(
            f"ENCODERS_RUNTIME={runtime} needs {', '.join(absent)}: pip install 'encoders[{runtime}]', "
            "or use ENCODERS_RUNTIME=torch"
        )
    resolved = "fp32" if precision == "auto" else precision
    if resolved not in PRECISIONS[runtime]:
        raise error(
            f"ENCODERS_PRECISION={precision} is not offered with ENCODERS_RUNTIME={runtime}; "
            f"use one of {', '.join(PRECISIONS[runtime])}"
        )
    return runtime


@dataclass(frozen=True)
class Built:
    runtime: ImageRuntime
    folder: str  # the cache entry
    built: bool  # exported now (False: taken from the cache)
    cosine: float | None  # to PyTorch fp32 on sample frames, when built now


def load(clip: Any, encoder: ClipImageEncoder, runtime: str, precision: str, cache_dir: str, threads: int) -> Built:
    """The runtime for ``clip``'s image tower: from the cache, or exported, checked and cached now."""
    import open_clip
    import torch

    from .cache import ExportCache
    from .export import (
        EXPORT_FORMAT,
        OPSET,
        cosines,
        image_tower,
        reference_embeddings,
        sample_frames,
        weights_fingerprint,
    )

    impl = _module(runtime)
    prec = "fp32" if precision == "auto" else precision
    artifact = "int8" if prec == "int8" else "fp32"  # bf16 is a setting of OpenVINO's compiler, not of the files
    tower = image_tower(clip, encoder.pre)
    label = encoder.name.split("/")[0]
    key = {
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "model": label,
        "weights": weights_fingerprint(tower),
        "preprocess": {"size": encoder.pre.size, "mean": list(encoder.pre.mean), "std": list(encoder.pre.std)},
        "runtime": runtime,
        "runtime_version": impl.version(),
        "torch": str(torch.__version__),
        "open_clip": str(open_clip.__version__),
        "artifact": artifact,
        **impl.key_extras(artifact == "int8"),
    }
    cache = ExportCache(cache_dir or None)
    started = time.monotonic()
    folder, built = cache.get_or_build(
        f"{label}-{runtime}-{artifact}", key, lambda tmp: impl.build(tower, tmp, artifact == "int8")
    )
    loaded = impl.load(folder, threads, prec)
    cosine = None
    if built:
        frames = sample_frames(encoder.pre.size)
        cosine = float(cosines(loaded.embed(frames), reference_embeddings(tower, frames)).min())
        if prec == "fp32" and cosine < 0.999:
            from .cache import discard

            discard(folder)
            raise model_module.ModelLoadError(
                f"the {runtime} export of {encoder.name} does not reproduce PyTorch (cosine {cosine:.5f} < 0.999); "
                "use ENCODERS_RUNTIME=torch"
            )
        if cosine < 0.99:
            log.warning("%s: cosine to PyTorch fp32 only %.4f on sample frames", loaded.label, cosine)
    log.info(
        "%s: image tower %s %s in %.1f s%s",
        loaded.label,
        "exported to" if built else "taken from the cache at",
        folder,
        time.monotonic() - started,
        f", cosine to PyTorch fp32 on sample frames {cosine:.5f}" if cosine is not None else "",
    )
    return Built(loaded, str(folder), built, cosine)


def _module(runtime: str) -> ModuleType:
    """The runtime's module: version(), key_extras(int8), build(tower, folder, int8), load(...)."""
    if runtime == "onnx":
        from . import onnx_runtime

        return onnx_runtime
    from . import openvino_runtime

    return openvino_runtime
