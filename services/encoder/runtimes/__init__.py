"""Other runtimes for the image tower: ONNX Runtime and OpenVINO, on the CPU.

PyTorch eager is the limit of a CPU worker: the pipeline reaches about 0.9 of the bare
model. Both runtimes run the same open_clip image tower, exported once with
``torch.onnx.export`` from the model the worker loaded (same weights, same preprocessing),
about twice as fast (benchmarks/RESULTS.md). The text tower (search) stays in PyTorch.

- ``export.py``: the exported graph (uint8 frames in, L2-normalised embeddings out), the
  fingerprint of its weights, the check that an export reproduces PyTorch.
- ``cache.py``: exports on disk, keyed by model, weights and runtime versions; written
  atomically, checked on every use, rebuilt when stale or corrupt.
- ``onnx_runtime.py``, ``openvino_runtime.py``: each runtime's build (fp32 or int8) and
  its ``embed``.
- ``select.py``: ENCODERS_RUNTIME (auto picks) and ENCODERS_PRECISION for each runtime;
  ``load`` builds the runtime for a loaded ``ClipImageEncoder`` (from the cache, or exported
  and checked now), which ``model.load_encoder`` puts under it.

The worker sees no difference: ``ClipImageEncoder.embed_arrays`` hands the decoded frames
to the runtime, and ``name`` stays the model's label, since embeddings of one model compare
across runtimes (cosine >= 0.99999 in fp32).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class ImageRuntime(Protocol):
    """An exported image tower, ready to run."""

    label: str  # what runs it, for logs: "onnxruntime 1.20.1, fp32"

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) frames -> float32 (N, D) L2-normalised embeddings."""
        ...
