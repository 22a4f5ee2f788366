"""`encoders encode --gpus all|0,2`: one worker process per GPU, each with its own session with the core."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from encoders.shared.settings import Exported

log = logging.getLogger(__name__)


def parse_gpus(spec: str, visible: int) -> list[int]:
    """'all' -> every visible GPU; '0,2' -> those; anything not visible is an error."""
    if visible == 0:
        raise ValueError("--gpus needs CUDA GPUs, and none is visible here (ENCODERS_DEVICE=cpu runs on the CPU)")
    if spec.strip().lower() == "all":
        return list(range(visible))
    try:
        ids = sorted({int(x) for x in spec.replace(" ", "").split(",") if x})
    except ValueError:
        raise ValueError(f"--gpus takes 'all' or GPU numbers like 0,1; got {spec!r}") from None
    missing = [i for i in ids if i >= visible or i < 0]
    if not ids or missing:
        raise ValueError(f"--gpus {spec}: GPUs {missing or spec} are not among the {visible} visible")
    return ids


def run_per_gpu(ids: list[int], worker_id: str, stop, prometheus: Exported | None = None) -> int:
    """Start `encoders encode` once per GPU (same settings, device cuda:N) and wait for them.
    Each serves its metrics on a port of its own: the worker's, plus its place in the list."""
    base = worker_id or f"{os.uname().nodename}-{os.getpid()}"
    procs = []
    for n, i in enumerate(ids):
        env = {
            **os.environ,
            "ENCODERS_GPUS": "",
            "ENCODERS_DEVICE": f"cuda:{i}",
            "ENCODERS_WORKER_ID": f"{base}-gpu{i}",
            **({"ENCODERS_PROMETHEUS_PORT": prometheus.prometheus_port_setting("encoder", n)} if prometheus else {}),
            **_data_bind(prometheus, n),
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "encoders", "encode", *_passed_args()], env=env))
    log.info("started %d workers, on GPUs %s", len(procs), ", ".join(map(str, ids)))
    while not stop.is_set() and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = [p.wait() for p in procs]
    return max(codes, key=abs) if any(codes) else 0


def _passed_args() -> list[str]:
    """This command's own flags, less --gpus and --device (each child gets its own device)."""
    args, skip = [], False
    for a in sys.argv[2:]:
        if skip:
            skip = False
            continue
        if a in ("--gpus", "--device", "--worker-id", "--prometheus-port"):
            skip = True
            continue
        if a.startswith(("--gpus=", "--device=", "--worker-id=", "--prometheus-port=")):
            continue
        args.append(a)
    return args


def _data_bind(cfg: object, n: int) -> dict[str, str]:
    """Each GPU's worker its own data socket: a fixed TCP port (with keys, 5560 by default) plus its index."""
    from .datalink import default_bind

    bind = getattr(cfg, "data_bind", None)
    if bind is None:
        return {}
    bind = bind or default_bind(getattr(cfg, "keys", ""))
    head, _, port = bind.rpartition(":")
    if bind.startswith("tcp://") and port.isdigit():
        return {"ENCODERS_DATA_BIND": f"{head}:{int(port) + n}"}
    if bind.startswith("ipc://"):
        return {"ENCODERS_DATA_BIND": f"{bind}-gpu{n}"}
    return {}
