"""One measurement of the plumbing benchmark (bench_plumbing.py): a pipeline of one version of the
code, or the floor, started, measured in its steady state, stopped, its counts read.

A version's pipeline is real processes of that version's code (its ``src`` first on PYTHONPATH):
the core (`encoders metrics`), the recorder (`encoders record`, into a new database of the
embedded PostgreSQL), the workers, one lossless ingest per camera reading the camera's MJPEG
stream over HTTP from pisim. This commit's workers are `encoders encode --runtime none`; a
version without that runtime gets the stand-in (plumbing_standin.py), which does the same work.
The floor (plumbing_floor.py) is a bare pyzmq forwarder in the core's place, with stand-ins in
the others'. The benchmark itself subscribes to the metrics publisher, as a viewer: it counts the
records (one per embedded frame) and reads each stream's end.

The clock: every process starts at once (each finds the core by itself); once every service is
up (the recorder's run row in the database, each worker's ready file) and records come from every
stream, ``warmup_s`` more; then CPU is read (plumbing_cpu.py) and the records counted, and again
after ``frames`` more records or ``seconds``, whichever first. Then the pipeline is stopped as an
operator does (`encoders stop`): each stream's end carries its totals, and for every stream
published = embedded + dropped + skipped + lost. A measurement where not every frame went through
(at most one per camera dropped: the frame a lossless ingest holds when stopped), or a service
did not exit 0, keeps its logs in benchmarks/out/plumbing-logs/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import zmq

from benchmarks import OUT

from .db_data import new_database
from .plumbing_cpu import per_frame, snapshot
from .plumbing_procs import LATENCY_PARTS, Records, Run, clean_env, free_port, wait

HERE = Path(__file__).resolve().parent
COUNTS = ("published", "embedded", "dropped", "skipped", "lost")
START_S = 90.0  # the longest a pipeline may take to start (slow on 2 busy cores, never this slow)


@dataclass(frozen=True)
class Version:
    """A version of the code: its label, its src/ (first on its processes' PYTHONPATH), its keys."""

    label: str
    src: Path
    keys: Path  # made by its own `encoders keys init`
    none_runtime: bool  # its workers can run `encoders encode --runtime none`


@dataclass(frozen=True)
class Case:
    keys: bool
    size: tuple[int, int]
    cameras: int
    fps: float = 0.0  # the cameras' rate; 0: as fast as the pipeline takes frames

    @property
    def workers(self) -> int:
        return 1 if self.cameras == 1 else 2

    @property
    def name(self) -> str:
        w, h = self.size
        cameras = f"{self.cameras} camera{'s' if self.cameras > 1 else ''}"
        rate = f", {self.fps:g} frames/s" if self.fps else ""
        return f"{w}x{h}, {cameras}{rate}, keys {'on' if self.keys else 'off'}"

    @property
    def latency(self) -> bool:
        """A case at a camera's rate measures latency (each record's, capture to its arrival at a
        subscriber); one at full speed measures throughput, where queues, not the path, set latency."""
        return self.fps > 0


@dataclass(frozen=True)
class Budget:
    warmup_s: float = 1.5
    frames: int = 3000
    seconds: float = 5.0


@dataclass(frozen=True)
class Source:
    """A camera: pisim serving one JPEG as fast as it is read, for every client."""

    url: str
    pid: int
    jpeg: Path  # the same JPEG, for the floor's feeders


def has_run(db_url: str) -> bool:
    """Whether the recorder has started its run (a row in runs: it was welcomed)."""
    try:
        with psycopg.connect(db_url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM runs").fetchone()
            return bool(row and row[0])
    except psycopg.Error:
        return False  # the schema is not there yet


WORKER_KINDS = ("decode", "light", "model")


def worker_kind() -> str:
    """BENCH_PLUMBING_WORKERS: what the workers do with each picture.

    - decode (default): a worker's whole work but the model (`--runtime none`: decoded, a thumbnail);
    - light: no picture work (ENCODERS_NONE_DECODE=0, the stand-in's --light), so that the plumbing, not
      the workers' decoding, sets the pace on a small machine;
    - model: the real encoder, every version's own `encoders encode` with BENCH_PLUMBING_MODEL
      (ViT-B-32) and random weights (speed does not depend on them), on the GPU where there is one:
      the issue's real test, on a GPU box (benchmarks/gpu/).
    """
    kind = os.environ.get("BENCH_PLUMBING_WORKERS", "decode")
    if kind not in WORKER_KINDS:
        raise SystemExit(f"BENCH_PLUMBING_WORKERS={kind!r}: one of {', '.join(WORKER_KINDS)}")
    return kind


def light_workers() -> bool:
    return worker_kind() == "light"


def worker_args(version: Version, name: str, ready: Path) -> list[str]:
    """A worker's command line (after the interpreter), but ``--core``: as BENCH_PLUMBING_WORKERS says, in
    this version's own words (a version without `--runtime none` gets the stand-in, which speaks its protocol)."""
    kind = worker_kind()
    if kind == "model":
        model = os.environ.get("BENCH_PLUMBING_MODEL", "ViT-B-32")
        args = ["-m", "encoders", "encode", "--model", model, "--pretrained", "none", "--worker-id", name]
        return [*args, "--ready-file", str(ready)]
    if version.none_runtime:
        args = ["-m", "encoders", "encode", "--runtime", "none", "--worker-id", name]
        return [*args, *(["--no-none-decode"] if kind == "light" else []), "--ready-file", str(ready)]
    return [
        str(HERE / "plumbing_standin.py"),
        "--name",
        name,
        *(["--light"] if kind == "light" else []),
        "--ready",
        str(ready),
    ]


def profiled(service: str, version: Version, case: Case, one: str = "") -> list[str]:
    """``-m cProfile -o FILE`` for a service BENCH_PLUMBING_PROFILE names (core, recorder, ingest; comma
    separated): its profile, written when it exits after the stop, in benchmarks/out/profiles/ (``one``:
    which of several, e.g. the camera). Profiled, a process runs slower: its figures are not the benchmark's."""
    if service not in os.environ.get("BENCH_PLUMBING_PROFILE", "").split(","):
        return []
    service += one
    folder = OUT / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    return [
        "-m",
        "cProfile",
        "-o",
        str(folder / (re.sub(r"[^A-Za-z0-9]+", "-", f"{service}-{version.label}-{case.name}") + ".prof")),
    ]


def pipeline(version: Version, case: Case, source: Source, db: tuple[str, int | None], budget: Budget) -> dict:
    """This version's pipeline for ``case``: started, measured, stopped; its figures."""
    folder = Path(tempfile.mkdtemp(prefix=f"plumbing-{version.label}-", dir=OUT))
    keys = version.keys if case.keys else None
    run = Run(folder, clean_env(version.src, keys))
    ports = {name: free_port() for name in ("core", "frames", "metrics")}
    core = f"tcp://127.0.0.1:{ports['core']}"
    server_url, postmaster = db
    # An SQL name as it is folded: a label such as "HEAD" would be created as "head".
    db_url = new_database(server_url, re.sub(r"[^a-z0-9_]", "_", f"plumbing_{version.label}_{os.getpid()}".lower()))
    ctx = zmq.Context()
    records = Records(ctx, f"tcp://127.0.0.1:{ports['metrics']}", keys, latency=case.latency)
    records.start()
    began = time.monotonic()
    try:
        # All at once: every service finds the core by itself, whenever it is up.
        binds = [f"--{name}-bind=tcp://127.0.0.1:{port}" for name, port in ports.items()]
        run.start(
            "core",
            [
                *profiled("core", version, case),
                "-m",
                "encoders",
                "metrics",
                *binds,
                "--state-dir",
                str(folder / "state"),
            ],
        )
        run.start(
            "recorder",
            [
                *profiled("recorder", version, case),
                "-m",
                "encoders",
                "record",
                "--core",
                core,
                "--database-url",
                db_url,
            ],
        )
        ready = [folder / f"w{i}.ready" for i in range(case.workers)]
        for i, path in enumerate(ready):
            run.start("workers", [*worker_args(version, f"w{i}", path), "--core", core])
        for i in range(case.cameras):
            args = [*profiled("ingest", version, case, f"-cam{i}"), "-m", "encoders", "ingest", "--core", core]
            args += ["--stream", source.url, "--stream-id", f"cam{i}"]
            run.start("ingest", [*args, "--lossless"])
        groups = {**run.pids(), "source": [source.pid], **({"postgres": [postmaster]} if postmaster else {})}
        up = Every(0.2, lambda: all(p.exists() for p in ready) and has_run(db_url))
        figures = measure(run, records, groups, case.cameras, up, budget)
        stopping = time.monotonic()
        stop = subprocess.run(
            [sys.executable, "-m", "encoders", "stop", "--pipeline", core, "--timeout", "60"],
            env=run.env,
            capture_output=True,
            text=True,
            timeout=90,
            cwd=folder,
        )
        if stop.returncode != 0:
            raise RuntimeError(f"encoders stop exited {stop.returncode}: {stop.stderr[-2000:]}\n{run.tails()}")
        wait(lambda: len(records.ends) == case.cameras, 60, "every stream's end", run, alive=False)
        exits = run.end()
        figures["timing"] = {"ready_s": figures.pop("ready_at") - began, "stop_s": time.monotonic() - stopping}
        got = {**figures, **ends(records.ends), "exits": exits}
        keep_logs(run, f"{version.label} {case.name}", got, case.cameras)
        return got
    except BaseException:
        print(run.tails(), file=sys.stderr)
        raise
    finally:
        records.done.set()
        records.join(5)
        run.kill()
        ctx.term()
        shutil.rmtree(folder, ignore_errors=True)


def floor(case: Case, source: Source, keys: Path, budget: Budget, src: Path) -> dict:
    """The bare forwarder in the core's place, with its feeders, workers and sink (plumbing_floor.py)."""
    folder = Path(tempfile.mkdtemp(prefix="plumbing-floor-", dir=OUT))
    run = Run(folder, clean_env(src, keys if case.keys else None))
    ep = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("core", "frames", "metrics")}
    script = str(HERE / "plumbing_floor.py")
    ctx = zmq.Context()
    records = Records(ctx, ep["metrics"], keys if case.keys else None)
    records.start()
    began = time.monotonic()
    try:
        binds = ["--core", ep["core"], "--frames", ep["frames"], "--metrics", ep["metrics"]]
        run.start("core", [script, "forwarder", *binds])
        run.start("recorder", [script, "sink", "--core", ep["core"], "--frames", ep["frames"]])
        for _ in range(case.workers):
            run.start("workers", [script, "worker", "--core", ep["core"]])
        for i in range(case.cameras):
            feeder = [script, "feeder", "--core", ep["core"], "--stream", f"cam{i}"]
            run.start("ingest", [*feeder, "--jpeg", str(source.jpeg)])
        figures = measure(run, records, run.pids(), case.cameras, lambda: True, budget)
        run.procs["core"][0].send_signal(signal.SIGTERM)
        wait(lambda: len(records.ends) == case.cameras, 30, "every stream's end", run, alive=False)
        figures["timing"] = {"ready_s": figures.pop("ready_at") - began}
        return {**figures, **ends(records.ends)}
    except BaseException:
        print(run.tails(), file=sys.stderr)
        raise
    finally:
        records.done.set()
        records.join(5)
        run.kill()
        ctx.term()
        shutil.rmtree(folder, ignore_errors=True)


class Every:
    """``condition`` asked at most every ``seconds`` (it queries the database), true once it was."""

    def __init__(self, seconds: float, condition: Callable[[], bool]) -> None:
        self.seconds, self.condition = seconds, condition
        self.asked, self.true = float("-inf"), False

    def __call__(self) -> bool:
        if not self.true and time.monotonic() - self.asked >= self.seconds:
            self.asked = time.monotonic()
            self.true = self.condition()
        return self.true


def measure(
    run: Run, records: Records, groups: dict[str, list[int]], streams: int, up: Callable, budget: Budget
) -> dict:
    """The steady state: once every service is ``up`` and records come from every stream, ``warmup_s``
    more; then CPU and records over the window."""
    wait(lambda: len(records.streams) == streams and up(), START_S, "every service, and records of every stream", run)
    ready = time.monotonic()
    wait(lambda: time.monotonic() - ready >= budget.warmup_s, budget.warmup_s + 10, "the warm-up", run)
    core = run.procs["core"][0].pid
    before, n0, t0, l0 = snapshot(groups, core), records.count, time.monotonic(), len(records.latencies)
    while records.count - n0 < budget.frames and time.monotonic() - t0 < budget.seconds:
        time.sleep(0.02)
    after, n1, t1, l1 = snapshot(groups, core), records.count, time.monotonic(), len(records.latencies)
    run.check_alive()
    frames = n1 - n0
    got = {
        "frames": frames,
        "seconds": t1 - t0,
        "frames_per_s": frames / (t1 - t0),
        "cpu_ms_per_frame": per_frame(before, after, frames),
        "ready_at": ready,
    }
    if records.latency:
        window = records.latencies[l0:l1]
        if not window:
            raise RuntimeError("no record's latency in the window")
        got["latency_ms"] = percentiles([w[0] for w in window])
        got["latency_parts_ms"] = {
            part: percentiles([w[i] for w in window]) for i, part in enumerate(LATENCY_PARTS, start=1)
        }
    return got


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p95, p99 and the max of latencies, in milliseconds."""
    ms = np.asarray(seconds) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(ms.max()), "n": int(ms.size)}


def keep_logs(run: Run, name: str, got: dict, cameras: int) -> None:
    """A measurement whose frames did not all go through, or whose services did not exit 0: its logs
    kept in benchmarks/out/plumbing-logs/ (named in ``got["logs"]``), to see why.

    All through: every frame the cameras' ingests sent was embedded. A lossless ingest stopped
    while a frame it read waits for credit gives that one up (at most one per camera), and since
    issue #24 tells the core (its end's ``dropped``), where d031ce1 counted it only in its own log."""
    totals = got["totals"]
    through = totals["published"] == totals["embedded"] + totals["dropped"] and totals["dropped"] <= cameras
    if not got["exits"] and through and not (totals["lost"] or totals["skipped"]):
        return
    folder = OUT / "plumbing-logs" / "".join(c if c.isalnum() else "-" for c in name)
    folder.mkdir(parents=True, exist_ok=True)
    for log in run.logs:
        if log.exists():
            shutil.copy(log, folder / log.name)
    got["logs"] = str(folder)
    print(f"    (not every frame went through, or a service exited badly: logs in {folder})", flush=True)


def ends(streams: dict[str, dict]) -> dict:
    """Each stream's totals as its end carried them, and their sum."""
    totals = {key: sum(int(s.get(key) or 0) for s in streams.values()) for key in COUNTS}
    return {"streams": {name: {k: s.get(k) for k in COUNTS} for name, s in sorted(streams.items())}, "totals": totals}
