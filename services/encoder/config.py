"""An encoder worker's settings."""

from __future__ import annotations

import re
from dataclasses import dataclass

from encoders.shared.messages import MAX_DIM
from encoders.shared.settings import CoreConnection, ModelSettings, SettingsError, setting

NONE_DIM = 512  # --none-dim's default: ViT-B-32's length


@dataclass
class EncoderConfig(ModelSettings, CoreConnection):
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = setting(
        0,
        "Largest batch encoded at once (0 = auto: 8 on the CPU, where larger batches gain little and cost "
        "latency; 64 on CUDA)",
        minimum=0,
    )
    batch_wait_ms: float = setting(
        5.0,
        "How long to wait for more frames once one is waiting, ms, while frames come closer together than "
        "that or soon after a batch finished (one that comes alone goes at once)",
        minimum=0,
    )
    runtime: str = setting(
        "auto",
        "What runs the image tower: torch, onnx (ONNX Runtime), openvino, or auto (on the CPU OpenVINO if "
        "installed, else ONNX Runtime, else torch; torch on CUDA). Both runtimes measured about 2x torch on the CPU "
        "(ViT-B-32, 2 cores); the tower is exported once into --model-cache. none: no model at all, for measuring "
        "and testing the plumbing (no torch needed): frames are decoded and thumbnailed as usual, and each vector "
        "comes from a hash of its JPEG (meaningless), under the model name none/<--none-dim>",
        choices=("auto", "torch", "onnx", "openvino", "none"),
    )
    none_dim: int = setting(
        NONE_DIM,
        "With --runtime none: the length of its vectors (512, as ViT-B-32's; the database's column takes the "
        "first worker's)",
        minimum=1,
        maximum=MAX_DIM,
    )
    none_decode: bool = setting(
        True,
        "With --runtime none: decode each frame, measure its levels and make its thumbnail, as a model's worker "
        "does (on); off: take each JPEG as it comes, checked only to start and end as a JPEG does, with no levels "
        "and no thumbnail, to measure the plumbing beyond what this machine's cores decode",
    )
    precision: str = setting(
        "auto",
        "Model precision: auto (fp16 on CUDA, fp32 on the CPU), fp32, fp16 (CUDA only), bf16, int8 (onnx and "
        "openvino runtimes only). On a CPU with AVX512-BF16 or AMX, bf16 measured 1.8x the fp32 speed for ViT-B-32 "
        "(AMD EPYC, 2 cores) at embedding cosine >= 0.9999 to fp32; without those instructions it is slower than "
        "fp32. int8 measured 1.8-1.9x fp32 with onnx or openvino at cosine >= 0.999 to fp32 (random weights)",
        choices=("auto", "fp32", "fp16", "bf16", "int8"),
    )
    model_cache: str = setting(
        "",
        "Folder of exported image towers for the onnx and openvino runtimes (default: $XDG_CACHE_HOME/encoders, "
        "else ~/.cache/encoders); safe to clear",
    )
    fast_decode: bool = setting(
        True,
        "Decode JPEGs at a reduced DCT scale when larger than the model input (same embeddings within cosine "
        "0.99; off = decode at full size)",
    )
    threads: int = setting(0, "CPU threads for the model (0 = all cores)", minimum=0)
    decode_threads: int = setting(
        0, "Threads decoding JPEGs (0 = auto: 1 on the CPU, whose cores run the model; up to 8 with CUDA)", minimum=0
    )
    thumbnail_size: int = setting(
        160,
        "Longest side of the small JPEG made of each frame and stored with its row, for search results "
        "(0 = none); made from the picture the worker decodes anyway, about 0.6-0.9 ms of a core for 640x480",
        minimum=0,
    )
    thumbnail_quality: int = setting(70, "The thumbnail's JPEG quality", minimum=1, maximum=100)
    worker_id: str = setting("", "Name of this worker in logs and records (default: host-pid)")
    gpus: str = setting("", "Start one worker per GPU: 'all' or GPU numbers like 0,1 (each on cuda:N)")
    data_bind: str = setting(
        "",
        "The data socket the ingests send this worker's pictures to (ROUTER; docs/PROTOCOL.md, the data link). "
        "Default: without keys tcp://127.0.0.1:* (loopback, any free port), with keys tcp://*:5560, or the next "
        "free port when another worker here has it (every interface, CurveZMQ: only the ingest keys the core names "
        "get in). Its port is named in the worker's Hello",
    )
    data_advertise: str = setting(
        "",
        "The address the ingests reach the data socket at, as given (e.g. tcp://gpu1.example:5560, behind NAT or a "
        "proxy). Default: the data socket's port on the host the core sees this worker's connection come from",
    )
    insecure: bool = setting(
        False,
        "Bind the data socket beyond loopback without keys: anyone who reaches its port can send it pictures (a "
        "network you trust only; said at every start)",
    )
    ready_file: str = setting("", "Create this file once the model is loaded (the all-in-one launcher waits for it)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise SettingsError(f"--device / ENCODERS_DEVICE must be auto, cpu, cuda or cuda:N, got {self.device!r}")
