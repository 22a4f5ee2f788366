"""An encoder worker's settings."""

from __future__ import annotations

import re
from dataclasses import dataclass

from encoders.shared.endpoints import METRICS_IN_PORT, WORK_PORT, this_machine
from encoders.shared.settings import ModelSettings, SettingsError, setting


@dataclass
class EncoderConfig(ModelSettings):
    work: str = setting(this_machine(WORK_PORT), "Ingest work endpoint(s) to take frames from, comma-separated")
    metrics_in: str = setting(this_machine(METRICS_IN_PORT), "Metrics' input, where embeddings are pushed")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = setting(
        0,
        "Largest batch encoded at once (0 = auto: 8 on the CPU, where larger batches gain little and cost "
        "latency; 64 on CUDA)",
        minimum=0,
    )
    batch_wait_ms: float = setting(5.0, "How long to wait for more frames once one is waiting, ms", minimum=0)
    precision: str = setting(
        "auto",
        "Model precision: auto (fp16 on CUDA, fp32 on the CPU), fp32, fp16 (CUDA only), bf16. On a CPU with "
        "AVX512-BF16 or AMX, bf16 measured 1.8x the fp32 speed for ViT-B-32 (AMD EPYC, 2 cores) at embedding "
        "cosine >= 0.9999 to fp32; without those instructions it is slower than fp32",
        choices=("auto", "fp32", "fp16", "bf16"),
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
    worker_id: str = setting("", "Name of this worker in logs and records (default: host-pid)")
    gpus: str = setting("", "Start one worker per GPU: 'all' or GPU numbers like 0,1 (each on cuda:N)")
    ready_file: str = setting("", "Create this file once the model is loaded (the all-in-one launcher waits for it)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise SettingsError(f"--device / ENCODERS_DEVICE must be auto, cpu, cuda or cuda:N, got {self.device!r}")
