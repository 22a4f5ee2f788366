"""What a worker embeds its frames with (``Embedder``), and the one that runs no model: ENCODERS_RUNTIME=none.

The worker needs little of its model: a name and a vector length for its Hello, the
preprocessing that turns a JPEG into the model's input, the largest batch it takes, and a call
that turns a batch into L2-normalised rows. ``ClipImageEncoder`` (model.py) is the real one, in
PyTorch or another runtime (runtimes/); ``NoModel`` stands in for it to measure and test the
plumbing (`python -m benchmarks plumbing`) without torch, open_clip or a model's cost. This
module imports neither: a worker with ENCODERS_RUNTIME=none never loads torch.

``NoModel`` still does the rest of a worker's work on each frame, with the same code: it decodes,
resizes and crops the JPEG as ViT-B-32's preprocessing does (224 px: a JPEG that does not decode
is Skipped), the worker measures the picture's levels and makes its thumbnail from it. Only the
model is not run (or, with ENCODERS_NONE_DECODE=0, no picture work is done at all: ``JpegBytes``).
Each frame's vector comes from its JPEG's bytes: ``dim`` floats drawn from a
generator seeded by the bytes' BLAKE2b hash, normalised. The same JPEG always gives the same
vector; two different ones, vectors all but orthogonal (so a stream of changing pictures looks
like a scene change at every frame: the vectors measure nothing). The worker names its model
``none/<dim>`` (``none/512`` by default, the length of ViT-B-32's) in its Hello and its
embeddings: the core fixes one model per pipeline, so such a worker never joins a pipeline of
real embeddings.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from encoders.shared.jpeg import CorruptJpeg, jpeg_size

from .config import NONE_DIM
from .preprocess import CorruptFrame, Loader, Preprocessor

log = logging.getLogger("encoders.encoder")

# ViT-B-32's preprocessing (open_clip's for the OpenAI weights): what NoModel decodes frames to.
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Embedder(Protocol):
    """What the worker needs of its model (``ClipImageEncoder`` or ``NoModel``)."""

    name: str  # e.g. "ViT-B-32/openai": in the Hello and every embedding
    dim: int  # the vectors' length
    max_batch: int  # the largest batch it takes (a GPU that ran out of memory lowers it)

    @property
    def pre(self) -> Loader:
        """JPEG bytes -> the model's input picture (an empty one: none decoded, no levels measured)."""
        ...

    def embed_frames(self, jpegs: Sequence[bytes], arrays: list[np.ndarray]) -> np.ndarray:
        """A batch of decoded frames (and their JPEGs) -> float32 (N, dim) L2-normalised rows."""
        ...


def unit_vector(jpeg: bytes, dim: int = NONE_DIM) -> np.ndarray:
    """The vector ENCODERS_RUNTIME=none gives a JPEG: ``dim`` float32, L2-normalised, drawn from a
    generator seeded by the BLAKE2b hash of the bytes (the same bytes, the same vector)."""
    seed = int.from_bytes(hashlib.blake2b(jpeg, digest_size=16).digest(), "little")
    vector = np.random.default_rng(seed).standard_normal(dim, dtype=np.float32)
    return vector / np.float32(np.linalg.norm(vector))


NO_PICTURE = np.zeros((0, 0, 3), np.uint8)  # what JpegBytes prepares: the worker measures no levels of it


class JpegBytes:
    """ENCODERS_NONE_DECODE=0's loader: no frame is decoded. A JPEG is only checked as the ingest
    checks it (its start and end markers, its frame header: shared/jpeg.py, a few microseconds), so
    that a truncated frame is still skipped; its picture is empty (no levels). For measuring the
    plumbing at rates this machine's cores could not decode."""

    def decode(self, data: bytes) -> bytes:
        try:
            jpeg_size(data)
        except CorruptJpeg as exc:
            raise CorruptFrame(f"not a whole JPEG ({exc})") from None
        return data

    def prepare(self, picture: bytes) -> np.ndarray:
        return NO_PICTURE

    def load(self, data: bytes) -> np.ndarray:
        return self.prepare(self.decode(data))


class NoModel:
    """ENCODERS_RUNTIME=none: frames decoded as for ViT-B-32 (or not at all: ``decode`` False),
    vectors from a hash of each JPEG."""

    max_batch = 1 << 30
    runtime_label = "none (no model)"

    def __init__(self, dim: int = NONE_DIM, fast_decode: bool = True, decode: bool = True) -> None:
        self.dim = dim
        self.name = f"none/{dim}"
        self.pre: Loader = JpegBytes()
        if decode:
            self.pre = Preprocessor(CLIP_SIZE, CLIP_MEAN, CLIP_STD, "bicubic", fast_decode)
        log.warning(
            "ENCODERS_RUNTIME=none: no model. Each frame's vector (%d floats) comes from a hash of its JPEG and "
            "measures nothing; for measuring and testing the plumbing only%s",
            dim,
            "" if decode else " (ENCODERS_NONE_DECODE=0: no frame decoded, no levels, no thumbnails)",
        )

    def embed_frames(self, jpegs: Sequence[bytes], arrays: list[np.ndarray]) -> np.ndarray:
        return np.stack([unit_vector(j, self.dim) for j in jpegs]) if jpegs else np.zeros((0, self.dim), np.float32)
