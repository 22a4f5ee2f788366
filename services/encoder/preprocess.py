"""JPEG bytes -> the model's input tensor, exactly as open_clip's transform prepares an image."""

from __future__ import annotations

import io
from typing import Callable, Sequence

import torch
from PIL import Image


class CorruptFrame(ValueError):
    pass


def decode_jpeg(data: bytes) -> Image.Image:
    """Decode fully (Pillow, libjpeg-turbo); a frame that does not decode raises CorruptFrame."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # force the decode now: truncated or corrupt data fails here, not later
        return img.convert("RGB")
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise CorruptFrame(str(exc) or type(exc).__name__) from None


def preprocess_batch(jpegs: Sequence[bytes], transform: Callable) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """Decode and transform a batch.

    Returns (stacked tensor or None, positions that made it, [(position, reason)] that did not).
    """
    tensors, ok, bad = [], [], []
    for i, data in enumerate(jpegs):
        try:
            tensors.append(transform(decode_jpeg(data)))
            ok.append(i)
        except CorruptFrame as exc:
            bad.append((i, f"corrupt JPEG: {exc}"))
    return (torch.stack(tensors) if tensors else None), ok, bad
