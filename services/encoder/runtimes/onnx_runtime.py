"""The image tower in ONNX Runtime (``pip install 'encoders[onnx]'``), fp32 or int8.

fp32 runs the exported graph as it is. int8 is ONNX Runtime's dynamic quantisation
(``quantize_dynamic``): the weights of every MatMul stored as int8, the activations
quantised per batch as they come, so no calibration images are needed and nothing depends
on what the camera sees. On CPUs without VNNI (AVX2 only) the int8 kernels can saturate,
so there the weights keep 7 bits (``reduce_range``), as ONNX Runtime advises.

Measured (ViT-B-32, 2 cores of an AMD EPYC with AVX-512 VNNI, batch 8, side by side):
PyTorch 23 images/s, fp32 48, int8 88 (cosine to fp32 0.9998 on random weights);
benchmarks/RESULTS.md has the run.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .export import INPUT, ImageTower, export_onnx

log = logging.getLogger(__name__)

MODEL_FILE = "image.onnx"


def version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def cpu_has_vnni() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX)."""
    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        ).split()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def build(tower: ImageTower, folder: Path, int8: bool) -> None:
    """Write the runtime's model into ``folder``: the export, or its int8 quantisation."""
    if not int8:
        export_onnx(tower, folder / MODEL_FILE)
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.fp32-") as scratch:
        fp32 = Path(scratch) / MODEL_FILE
        export_onnx(tower, fp32)
        with quiet_root_logger_from("onnxruntime/quantization"):
            quantize_dynamic(
                fp32,
                folder / MODEL_FILE,
                weight_type=QuantType.QInt8,
                reduce_range=not cpu_has_vnni(),
                use_external_data_format=True,
            )


@contextmanager
def quiet_root_logger_from(path_part: str) -> Iterator[None]:
    """Drop the warnings a library logs on the root logger itself (the quantiser advises
    pre-processing, and says the uint8 input is not quantised: neither concerns us)."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or path_part not in record.pathname.replace("\\", "/")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def key_extras(int8: bool) -> dict:
    """What the built files depend on beyond the model and the versions."""
    return {"reduce_range": not cpu_has_vnni()} if int8 else {}


class OnnxRuntimeTower:
    """An ONNX Runtime session on the CPU; one ``embed`` at a time (the worker's model thread)."""

    def __init__(self, folder: Path, threads: int, precision: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per physical core
        options.inter_op_num_threads = 1  # one graph at a time: parallelism within each operator
        self.session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        self.label = f"onnxruntime {version()}, {precision}"

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {INPUT: np.ascontiguousarray(pixels, dtype=np.uint8)})[0]
        return np.asarray(out, dtype=np.float32)


def load(folder: Path, threads: int, precision: str) -> OnnxRuntimeTower:
    return OnnxRuntimeTower(folder, threads, precision)
