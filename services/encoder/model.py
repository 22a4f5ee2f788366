"""Loading an open_clip model and running its image tower on batches, in PyTorch or in
another runtime (ONNX Runtime, OpenVINO: ``runtimes/``) that runs the same exported tower."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .preprocess import Preprocessor

if TYPE_CHECKING:
    from .runtimes import ImageRuntime

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"ENCODERS_DEVICE={name} but CUDA is not available here; use cpu or auto")
    return torch.device(name)


def register_model_config(model: str) -> str:
    """A model given as the path of a config JSON is registered with open_clip under its file stem."""
    import open_clip

    path = Path(model)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelLoadError(f"model config {path} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown open_clip model {model!r}; see open_clip.list_models(), or give a config JSON path"
        )
    return model


@dataclass
class ClipImageEncoder:
    """The image tower of a CLIP model, on one device, returning L2-normalised float32 rows."""

    # open_clip's CLIP (a torch.nn.Module; open_clip ships no types, so encode_image is untyped);
    # None once ``runtime`` runs the image tower: the worker needs nothing else of it.
    model: Any
    pre: Preprocessor  # fast path equivalent to open_clip's transform
    reference_transform: Callable  # open_clip's own eval transform (PIL image -> tensor), for checks
    device: torch.device
    dtype: torch.dtype  # of the model's input
    name: str  # e.g. "ViT-B-32/openai", carried in every embedding message
    dim: int
    max_batch: int = 1 << 30  # lowered when the GPU runs out of memory
    runtime: ImageRuntime | None = None  # ONNX Runtime or OpenVINO running the exported tower; None: PyTorch

    @property
    def runtime_label(self) -> str:
        return self.runtime.label if self.runtime is not None else f"torch {torch.__version__}"

    @torch.inference_mode()
    def embed(self, batch: torch.Tensor) -> np.ndarray:
        # open_clip ships no types: to mypy a Module's attribute is a Tensor or a Module.
        features = self.model.encode_image(batch.to(self.device, self.dtype, non_blocking=True))
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy()

    def embed_frames(self, jpegs: Sequence[bytes], arrays: list[np.ndarray]) -> np.ndarray:
        """The worker's call (embedder.Embedder): the decoded frames embedded (their JPEGs are not needed)."""
        return self.embed_arrays(arrays)

    def embed_arrays(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Decoded uint8 frames -> embeddings; a CUDA out-of-memory halves the batch and goes on."""
        if self.runtime is not None:
            return self.runtime.embed(np.stack(arrays))
        try:
            return self.embed(self.pre.to_tensor(arrays, self.device, self.dtype))
        except torch.cuda.OutOfMemoryError:
            if len(arrays) == 1:
                raise
            half = len(arrays) // 2
            if half < self.max_batch:
                log.warning("CUDA out of memory at a batch of %d: batches are now at most %d", len(arrays), half)
                self.max_batch = half
            torch.cuda.empty_cache()
            return np.concatenate([self.embed_arrays(arrays[:half]), self.embed_arrays(arrays[half:])])


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RUNTIME_TORCH_DEVICE = "cpu"  # what the model is loaded on to be exported


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ModelLoadError("fp16 runs on CUDA only; on the CPU use fp32 or bf16")
    return precision


def load_encoder(
    model: str,
    pretrained: str,
    device: str,
    precision: str = "auto",
    fast_decode: bool = True,
    runtime: str = "torch",
    cache_dir: str = "",
    threads: int = 0,
) -> ClipImageEncoder:
    """Build the model with open_clip's real loading code.

    ``pretrained`` is an open_clip tag (downloaded once into the hub cache), a local
    checkpoint path, or 'none' for random weights (tests and benchmarks only; always the
    same ones, so that exports of them are cached too).
    ``precision``: auto (fp16 on CUDA, fp32 on the CPU), fp32, fp16 or bf16; int8, bf16 or
    fp32 with another runtime.
    ``runtime``: torch, onnx, openvino or auto (``runtimes/select.py``); with onnx or
    openvino the image tower is exported into ``cache_dir`` (default ~/.cache/encoders)
    once, and runs there on ``threads`` threads (0: all cores).
    """
    import open_clip

    from .runtimes import select

    name = register_model_config(model)
    runtime = select.choose(runtime, device, precision, torch.cuda.is_available())
    if runtime == "torch":
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
    else:  # the export is made from the fp32 model on the CPU, where the runtime runs
        dev, prec = torch.device(RUNTIME_TORCH_DEVICE), "fp32"
    tag = None if pretrained.lower() == "none" else pretrained
    if tag is None:
        log.warning("!" * 72)
        log.warning("ENCODERS_PRETRAINED=none: %s has RANDOM weights. Embeddings and drift are", name)
        log.warning("meaningless; use this for tests and benchmarks only.")
        log.warning("!" * 72)
    elif os.path.sep in tag or tag.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not Path(tag).is_file():
            raise ModelLoadError(f"checkpoint {tag} does not exist (ENCODERS_PRETRAINED)")
    elif tag not in open_clip.list_pretrained_tags_by_model(name):
        raise ModelLoadError(
            f"{name} has no pretrained weights {tag!r}; known: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}"
        )
    try:
        # open_clip's own low-precision conversion keeps LayerNorm in fp32 where it matters.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights: the same ones every time (no effect on real ones)
            clip, _, reference = open_clip.create_model_and_transforms(name, pretrained=tag, device=dev, precision=prec)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load weights {pretrained!r} for {name}: {exc}\n"
            "If this machine has no internet, download the weights elsewhere and set ENCODERS_PRETRAINED "
            "to the checkpoint's path, or set ENCODERS_PRETRAINED=none for random weights (tests only)."
        ) from None
    clip.eval()
    pre = Preprocessor.for_model(clip, fast_decode)
    encoder = ClipImageEncoder(
        clip, pre, reference, dev, PRECISIONS[prec], f"{name}/{Path(tag).name if tag else 'none'}", 0
    )
    encoder.dim = int(encoder.embed(torch.zeros(1, 3, pre.size, pre.size)).shape[-1])
    if runtime != "torch":
        try:
            encoder.runtime = select.load(clip, encoder, runtime, precision, cache_dir, threads).runtime
        except ModelLoadError:
            raise
        except Exception as exc:  # export, cache or runtime: the worker cannot start, and says why in one line
            raise ModelLoadError(f"ENCODERS_RUNTIME={runtime}: {type(exc).__name__}: {exc}") from exc
        encoder.model = None  # the runtime holds its own copy of the weights
        prec = "fp32" if precision == "auto" else precision
    log.info(
        "loaded %s on %s in %s with %s: %d-dim embeddings, %d px input",
        encoder.name,
        dev,
        prec,
        encoder.runtime_label,
        encoder.dim,
        pre.size,
    )
    return encoder
