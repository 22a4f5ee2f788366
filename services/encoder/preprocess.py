"""JPEG bytes -> the model's input batch, as open_clip's own transform prepares an image, faster.

open_clip's eval transform is: resize the shortest side to S (bicubic, antialiased, in
Pillow), centre-crop S x S, scale to [0, 1], normalise with the model's mean and std.
This module does the same steps with two speed-ups that keep the result faithful
(embedding cosine >= 0.99 against open_clip's path; see tests/unit/test_encoder_preprocess.py):

- JPEG decoding at a reduced scale: libjpeg-turbo's DCT scaling (through Pillow's
  ``draft``) decodes a 1920x1080 frame straight to 480x270 when the model needs 224 px,
  skipping most of the decode and resize work. The reduced image is never smaller than
  what the resize needs.
- Scaling and normalising the whole batch at once, as one vectorised tensor operation,
  on the GPU when the model runs there (uint8 goes over PCIe: 4x fewer bytes than float).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch only where a model runs: a worker with ENCODERS_RUNTIME=none never loads it
    import torch

INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class CorruptFrame(ValueError):
    pass


class Loader(Protocol):
    """What turns a frame's JPEG into the array a batch is made of, in two steps: ``decode`` (CorruptFrame
    if it cannot), then ``prepare`` (``Preprocessor``, or embedder.JpegBytes for ENCODERS_RUNTIME=none
    without decoding, whose "picture" is the checked bytes)."""

    def decode(self, data: bytes) -> Any: ...

    def prepare(self, picture: Any) -> np.ndarray: ...

    def load(self, data: bytes) -> np.ndarray: ...  # prepare(decode(data))


def decode_jpeg(data: bytes, min_size: int | None = None) -> Image.Image:
    """Decode to RGB; with ``min_size``, at the smallest DCT scale whose sides stay >= min_size.

    A frame that does not decode raises CorruptFrame.
    """
    try:
        img = Image.open(io.BytesIO(data))
        if min_size is not None and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        img.load()  # force the decode now: truncated or corrupt data fails here, not later
        return img.convert("RGB")
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise CorruptFrame(str(exc) or type(exc).__name__) from None


@dataclass(frozen=True)
class Preprocessor:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    fast_decode: bool = True  # DCT-scaled decoding; off = decode at full size, as open_clip would

    @classmethod
    def for_model(cls, model: torch.nn.Module, fast_decode: bool = True) -> Preprocessor:
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else int(cfg["size"])
        if cfg.get("resize_mode", "shortest") != "shortest":
            raise ValueError(f"resize mode {cfg['resize_mode']!r} is not supported (only 'shortest')")
        return cls(size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"), fast_decode)

    def load(self, data: bytes) -> np.ndarray:
        """One frame -> uint8 HxWx3 array of size x size: decoded, resized, centre-cropped."""
        return self.prepare(self.decode(data))

    def decode(self, data: bytes) -> Image.Image:
        """The whole frame decoded, at the smallest DCT scale the model allows (fast_decode); CorruptFrame
        if it does not decode. What the worker's thumbnail is made from as well: one decode a frame."""
        return decode_jpeg(data, self.size if self.fast_decode else None)

    def prepare(self, img: Image.Image) -> np.ndarray:
        """A decoded frame -> the model's uint8 HxWx3 array of size x size: resized, centre-cropped."""
        w, h = img.size
        # Same arithmetic as torchvision's Resize(int) on the shortest side, then CenterCrop.
        if w <= h:
            new_w, new_h = self.size, int(self.size * h / w)
        else:
            new_w, new_h = int(self.size * w / h), self.size
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), INTERPOLATION[self.interpolation])
        left = round((new_w - self.size) / 2.0)
        top = round((new_h - self.size) / 2.0)
        img = img.crop((left, top, left + self.size, top + self.size))
        return np.asarray(img)

    def to_tensor(self, arrays: Sequence[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """uint8 NHWC arrays -> normalised NCHW batch on ``device``, in one vectorised step."""
        import torch

        batch = torch.from_numpy(np.stack(arrays))
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).to(torch.float32)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255.0
        return ((batch - mean) / std).to(dtype).contiguous()


class Loaded(NamedTuple):
    arrays: list[np.ndarray]  # the frames that decoded, in order
    ok: list[int]  # their positions in the batch
    bad: list[tuple[int, str]]  # (position, reason) of those that did not
    extras: list[Any]  # with ``each``: what it gave for each frame that decoded, else Nones


def load_batch(
    pre: Loader, jpegs: Sequence[bytes], pool: Executor | None = None, each: Callable[[Any], Any] | None = None
) -> Loaded:
    """Decode a batch: the arrays, the positions that decoded, and (position, reason) of those that did not.

    With a thread pool the frames decode in parallel: Pillow releases the GIL while it
    decodes and resizes, so this scales with cores (what a GPU worker needs to keep up).
    ``each``, when given, gets each decoded picture once its array is made, in the same thread: the
    worker's thumbnail is made from it, not from a second decode of the JPEG (0.2 ms less a
    640x480 frame, 2.2 ms a 1920x1080 one: benchmarks/RESULTS.md).
    """

    def one(data: bytes) -> tuple[np.ndarray, Any] | str:
        try:
            picture = pre.decode(data)
        except CorruptFrame as exc:
            return f"corrupt JPEG: {exc}"
        return pre.prepare(picture), None if each is None else each(picture)

    results = list(pool.map(one, jpegs)) if pool is not None and len(jpegs) > 1 else [one(j) for j in jpegs]
    loaded = Loaded([], [], [], [])
    for i, r in enumerate(results):
        if isinstance(r, str):
            loaded.bad.append((i, r))
        else:
            loaded.arrays.append(r[0])
            loaded.extras.append(r[1])
            loaded.ok.append(i)
    return loaded


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as JPEG's own luma


def picture_levels(rgb: np.ndarray) -> tuple[float, float]:
    """(brightness, contrast) of a decoded HxWx3 uint8 picture, in 8-bit levels: its mean luma,
    and the largest standard deviation of its three channels (about 0 for a picture of one
    colour, dark, white or any other: a covered lens or a blacked-out feed). Every 4th pixel
    each way: a picture's levels need no more, and it costs a fraction of a millisecond."""
    sample = rgb[::4, ::4].reshape(-1, 3).astype(np.float32)
    brightness = float(np.clip((sample @ LUMA).mean(), 0.0, 255.0))
    return brightness, float(min(255.0, sample.std(axis=0).max()))
