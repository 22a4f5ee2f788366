"""The image tower as the runtimes run it, exported from the worker's own open_clip model.

The exported graph takes what the worker's decoder produces, uint8 frames (N, S, S, 3),
and does the rest itself: NCHW, scaling and normalising with the model's mean and std,
the image tower, L2 normalisation. So the runtimes get the frames without a copy through
torch, and the arithmetic is the one ``Preprocessor.to_tensor`` + ``ClipImageEncoder.embed``
do (fp32 embeddings within cosine 0.9999999 of PyTorch's, ViT-B-32).

Export cost (ViT-B-32, 2 cores): about 9 s with torch's exporter (torch.export-based,
opset 18; the TorchScript one is deprecated), once per model and weights: see cache.py.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..preprocess import Preprocessor

log = logging.getLogger(__name__)

OPSET = 18
# Bumped whenever the exported graph changes (inputs, outputs, what it computes): part of
# every cache key, so that exports from older code are rebuilt, never used.
EXPORT_FORMAT = 1
INPUT, OUTPUT = "frames", "embeddings"


class ImageTower(torch.nn.Module):
    """uint8 frames (N, S, S, 3) -> L2-normalised float32 embeddings (N, D)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, visual: torch.nn.Module, pre: Preprocessor):
        super().__init__()
        self.visual = visual
        self.size = pre.size
        # As Preprocessor.to_tensor: (x - 255 * mean) / (255 * std), in fp32.
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = (frames.permute(0, 3, 1, 2).to(torch.float32) - self.mean) / self.std
        return torch.nn.functional.normalize(self.visual(x).float(), dim=-1)


def image_tower(clip: Any, pre: Preprocessor) -> ImageTower:
    """The image tower of a loaded open_clip model (fp32, CPU, eval mode), ready to export."""
    visual: torch.nn.Module = clip.visual
    if next(visual.parameters()).dtype != torch.float32 or next(visual.parameters()).device.type != "cpu":
        raise ValueError("export the fp32 model on the CPU")
    return ImageTower(visual, pre).eval()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of every tensor (name, dtype, shape, bytes): which weights an export holds.

    About 0.2 s for ViT-B-32's image tower (350 MB at 2 GB/s).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def export_onnx(tower: ImageTower, path: Path) -> None:
    """Write the ONNX graph at ``path`` (its weights in ``path``.data beside it), batch size free."""
    example = torch.zeros(2, tower.size, tower.size, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), quiet("onnx_ir", "onnxscript"), torch.no_grad():
        # The exporter warns about things that do not concern an inference graph, and logs
        # each of its passes (hundreds of lines at INFO).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes={"frames": {0: batch}},
            external_data=True,  # towers over 2 GB (ViT-H and up) do not fit one protobuf
            verbose=False,
        )


@contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Those loggers at WARNING and above while the block runs."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def sample_frames(size: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """Camera-like uint8 frames (N, size, size, 3): smooth shading, hard-edged blocks, sensor noise.

    What a build checks its export on: random noise would say little about real frames.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.zeros((size, size, 3))
        for c in range(3):  # low-frequency shading
            a, b, p = rng.uniform(-3, 3, 3)
            img[..., c] = 128 + 80 * np.sin(a * xs + b * ys + p)
        for _ in range(6):  # objects with edges
            x0, y0 = rng.integers(0, size, 2)
            w, h = rng.integers(size // 10, size // 3, 2)
            img[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
        img += rng.normal(0, 6, img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def reference_embeddings(tower: ImageTower, frames: np.ndarray) -> np.ndarray:
    """What PyTorch computes for ``frames``: the figure an export is checked against."""
    with torch.inference_mode():
        return tower(torch.from_numpy(frames)).numpy()
