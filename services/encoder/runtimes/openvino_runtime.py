"""The image tower in OpenVINO (``pip install 'encoders[openvino]'``), fp32, bf16 or int8.

OpenVINO is run as it is meant to be: compiled with the THROUGHPUT hint, which gives each
of a few streams its share of the cores, and fed through an ``AsyncInferQueue``: a batch is
split across the streams' infer requests, which run at once. One synchronous request uses
one stream only: half the speed on 2 cores (measured, ViT-B-32, batch 8: THROUGHPUT with
one synchronous request 25 images/s, LATENCY hint 47, THROUGHPUT with async requests 50).

Precisions:
- fp32: the exported graph as it is, INFERENCE_PRECISION_HINT f32 (OpenVINO would
  otherwise pick bf16 by itself on some CPUs).
- bf16: the same files, computed in bf16 where the CPU has AVX512-BF16 or AMX (87 images/s
  here, cosine 0.99995 to fp32); elsewhere OpenVINO emulates it, slowly.
- int8: the weights of every MatMul stored as int8 (symmetric, per output channel: what
  NNCF's ``compress_weights`` writes, done here in numpy), and OpenVINO's dynamic
  quantisation of the activations (groups of 32) turning those MatMuls into int8 ones at
  run time: 95 images/s, cosine 0.9999 to fp32 (random weights). No calibration images.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .export import ImageTower, export_onnx

log = logging.getLogger(__name__)

MODEL_FILE = "image.xml"  # and image.bin beside it
DYNAMIC_QUANTIZATION_GROUP = 32  # measured: 32 gave 95 images/s; no grouping (per row) 45, none 47


def version() -> str:
    import openvino

    return str(openvino.get_version())


def key_extras(int8: bool) -> dict:
    """What the built files depend on beyond the model and the versions: nothing (the
    dynamic quantisation is a setting of the compiled model)."""
    return {}


def build(tower: ImageTower, folder: Path, int8: bool) -> None:
    """Write OpenVINO's model (image.xml + image.bin) into ``folder``, through the ONNX export."""
    import openvino as ov

    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.onnx-") as scratch:
        onnx = Path(scratch) / "image.onnx"
        export_onnx(tower, onnx)
        model = ov.Core().read_model(str(onnx))
        if int8:
            n = compress_weights_int8(model)
            log.info("int8: weights of %d MatMuls compressed", n)
        # compress_to_fp16 would store fp32 weights as fp16: not what fp32 promises.
        ov.save_model(model, str(folder / MODEL_FILE), compress_to_fp16=False)


def compress_weights_int8(model: Any) -> int:
    """Every MatMul with a constant 2-D fp32 weight gets it as int8 x per-channel scale instead.

    The Constant(i8) -> Convert(f32) -> Multiply(scale) pattern is OpenVINO's compressed
    weight, which its CPU plugin runs as an int8 MatMul when dynamic quantisation is on.
    """
    import openvino as ov
    import openvino.opset13 as ops

    count = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        source = node.input_value(1).get_node()
        if source.get_type_name() != "Constant" or source.get_element_type() != ov.Type.f32:
            continue
        w = source.get_data()
        if w.ndim != 2:
            continue
        # The output channels are the rows of a transposed weight, else its columns.
        reduce_axis = 1 if node.get_attributes()["transpose_b"] else 0
        amax = np.abs(w).max(axis=reduce_axis, keepdims=True)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        weight = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))
        node.input(1).replace_source_output(weight.output(0))
        count += 1
    return count


class OpenVinoTower:
    """A model compiled for the CPU's streams; one ``embed`` at a time (the worker's model thread)."""

    def __init__(self, folder: Path, threads: int, precision: str, hint: str = "THROUGHPUT"):
        import openvino as ov

        config: dict[str, Any] = {
            "PERFORMANCE_HINT": hint,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision == "int8":
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = DYNAMIC_QUANTIZATION_GROUP
        core = ov.Core()
        self.folder = folder
        self.compiled = core.compile_model(core.read_model(str(folder / MODEL_FILE)), "CPU", config)
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self.queue.set_callback(self._finished)
        self._parts: dict[int, np.ndarray] = {}
        self.label = f"openvino {version().split('-')[0]}, {precision}, {hint.lower()} hint, {self.requests} requests"

    def _finished(self, request: Any, part: int) -> None:
        self._parts[part] = request.get_output_tensor(0).data.copy()  # the request's buffer is reused

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """The batch split across the infer requests, run at once, put back together in order."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        parts = np.array_split(pixels, min(self.requests, len(pixels)))
        self._parts = {}
        for i, part in enumerate(parts):
            self.queue.start_async({0: part}, userdata=i)
        self.queue.wait_all()
        if len(self._parts) != len(parts):  # a request failed: its callback never ran
            raise RuntimeError(f"OpenVINO finished {len(self._parts)} of {len(parts)} requests")
        return np.concatenate([self._parts[i] for i in range(len(parts))]).astype(np.float32, copy=False)


def load(folder: Path, threads: int, precision: str) -> OpenVinoTower:
    return OpenVinoTower(folder, threads, precision)
