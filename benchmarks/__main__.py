"""Run every benchmark, print its tables and write its JSON to benchmarks/out/.

python -m benchmarks            # all of MODULES (what `make bench` runs)
python -m benchmarks encoder    # only those whose name contains 'encoder'
python -m benchmarks plumbing   # the pipeline without a model, this commit against d031ce1 (a few minutes)
python -m benchmarks hnsw       # an experiment of EXTRA: only when named
"""

from __future__ import annotations

import importlib
import json
import platform
import signal
import sys
import time
from pathlib import Path

from benchmarks import OUT

MODULES = ["benchmarks.bench_encoder", "benchmarks.bench_db", "benchmarks.bench_plumbing", "benchmarks.bench_feed"]
# Minutes each; run only when asked for by name. bench_ingest: about 3 minutes, most of it writing
# its H.265 clips.
EXTRA = ["benchmarks.bench_hnsw", "benchmarks.bench_ingest"]


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def main(argv: list[str]) -> int:
    # A benchmark stopped (`timeout`, `kill`) unwinds as after Ctrl-C: its pipelines' processes are
    # stopped, its temporary folders and its `git worktree` removed (they outlived it before).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    OUT.mkdir(exist_ok=True)
    where = machine()
    print(f"machine: {where}")
    for name in MODULES + EXTRA:
        if (argv or name in EXTRA) and not any(a in name for a in argv):
            continue
        module = importlib.import_module(name)
        print(f"\n=== {name} ===", flush=True)
        result = module.main()
        result["machine"] = where
        path = OUT / f"{name.rsplit('.', 1)[-1]}.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
