"""Loading an open_clip model and running its image tower on batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .preprocess import Preprocessor

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

    model: Any  # open_clip's CLIP (a torch.nn.Module; open_clip ships no types, so encode_image is untyped)
    pre: Preprocessor  # fast path equivalent to open_clip's transform
    reference_transform: Callable  # open_clip's own eval transform (PIL image -> tensor), for checks
    device: torch.device
    dtype: torch.dtype  # of the model's input
    name: str  # e.g. "ViT-B-32/openai", carried in every embedding message
    dim: int
    max_batch: int = 1 << 30  # lowered when the GPU runs out of memory

    @torch.inference_mode()
    def embed(self, batch: torch.Tensor) -> np.ndarray:
        # open_clip ships no types: to mypy a Module's attribute is a Tensor or a Module.
        features = self.model.encode_image(batch.to(self.device, self.dtype, non_blocking=True))
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy()

    def embed_arrays(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Decoded uint8 frames -> embeddings; a CUDA out-of-memory halves the batch and goes on."""
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


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ModelLoadError("fp16 runs on CUDA only; on the CPU use fp32 or bf16")
    return precision


def load_encoder(
    model: str, pretrained: str, device: str, precision: str = "auto", fast_decode: bool = True
) -> ClipImageEncoder:
    """Build the model with open_clip's real loading code.

    ``pretrained`` is an open_clip tag (downloaded once into the hub cache), a local
    checkpoint path, or 'none' for random weights (tests and benchmarks only).
    ``precision``: auto (fp16 on CUDA, fp32 on the CPU), fp32, fp16 or bf16.
    """
    import open_clip

    name = register_model_config(model)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
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
    log.info("loaded %s on %s in %s: %d-dim embeddings, %d px input", encoder.name, dev, prec, encoder.dim, pre.size)
    return encoder
