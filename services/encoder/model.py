"""Loading an open_clip model and running its image tower on batches."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

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
        raise ModelLoadError(f"unknown open_clip model {model!r}; see open_clip.list_models(), or give a config JSON path")
    return model


@dataclass
class ClipImageEncoder:
    """The image tower of a CLIP model, on one device, returning L2-normalised float32 rows."""

    model: torch.nn.Module
    preprocess: Callable  # open_clip's own eval transform: PIL image -> CHW float tensor
    device: torch.device
    name: str  # e.g. "ViT-B-32/openai", carried in every embedding message
    dim: int
    image_size: int

    @torch.inference_mode()
    def embed(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                features = self.model.encode_image(batch)
        else:
            features = self.model.encode_image(batch)
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)


def load_encoder(model: str, pretrained: str, device: str) -> ClipImageEncoder:
    """Build the model with open_clip's real loading code.

    ``pretrained`` is an open_clip tag (downloaded once into the hub cache), a local
    checkpoint path, or 'none' for random weights (tests and benchmarks only).
    """
    import open_clip

    name = register_model_config(model)
    dev = resolve_device(device)
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
        raise ModelLoadError(f"{name} has no pretrained weights {tag!r}; known: "
                             f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}")
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, device=dev)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load weights {pretrained!r} for {name}: {exc}\n"
            "If this machine has no internet, download the weights elsewhere and set ENCODERS_PRETRAINED "
            "to the checkpoint's path, or set ENCODERS_PRETRAINED=none for random weights (tests only)."
        ) from None
    clip.eval()
    image_size = clip.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    with torch.inference_mode():
        dim = int(clip.encode_image(torch.zeros(1, 3, image_size, image_size, device=dev)).shape[-1])
    label = f"{name}/{Path(tag).name if tag else 'none'}"
    log.info("loaded %s on %s: %d-dim embeddings, %d px input", label, dev, dim, image_size)
    return ClipImageEncoder(clip, preprocess, dev, label, dim, image_size)
