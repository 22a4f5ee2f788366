"""The plumbing benchmark (issue #21): what moving frames costs, without a model.

The whole pipeline in real processes (core, recorder with the embedded PostgreSQL, one lossless
ingest per camera reading pisim over HTTP, workers with ENCODERS_RUNTIME=none), in each case:
embedded frames/s and the CPU milliseconds each process spends per embedded frame (the core's
main thread and its ZeroMQ I/O threads apart). Cases: CurveZMQ keys off and on; 640x480 JPEGs
(about 51 KB) and 1920x1080 (about 270 KB); 1 camera and 1 worker, 8 cameras and 2 workers.

Measured side by side in the same run, case by case (the order of the two alternating):
- this commit (the working tree's code);
- the previous design, commit d031ce1 (BENCH_PLUMBING_BASE), checked out with `git worktree add`
  into a temporary folder, its own code on its processes' PYTHONPATH; it has no runtime none, so
  its workers are plumbing_standin.py, which does the same work per frame;
- the floor: a bare pyzmq forwarder in the core's place making the same sends per frame
  (plumbing_floor.py), with stand-ins in the other places.
On a small shared machine only ratios measured within one run compare: the table of ratios is
this commit / d031ce1, case by case.

Settings (environment): BENCH_PLUMBING_FRAMES (3000) and BENCH_PLUMBING_SECONDS (5): each
measurement's window ends at whichever comes first, after BENCH_PLUMBING_WARMUP_S (1.5) of
records; BENCH_PLUMBING_BASE (d031ce1), a commit or a folder holding that commit's tree;
BENCH_PLUMBING_CASES, parts of the cases' names to keep, separated by '|' (e.g. "640x480, 1 camera,
keys on|30 frames/s"); BENCH_PLUMBING_LATENCY_S (20), the window of the latency cases (one camera
at 30 frames/s, and eight, keys on: p50/p95/p99 of capture to record, each record's capture time to
its arrival at the benchmark's subscription; no floor); BENCH_PLUMBING_PROFILE=core,recorder,ingest
profiles those services (plumbing_run.py);
BENCH_PLUMBING_BASE may name a commit of protocol 3 too (its workers then run --runtime none, as this
commit's). BENCH_PLUMBING_WORKERS (plumbing_run.py): decode (default), light (workers that do no
picture work: on a small machine the workers' decoding otherwise sets the pace, not the plumbing), or
model (the real encoder, ViT-B-32 with random weights, on the GPU where there is one:
benchmarks/gpu/run.sh runs this on a GPU box).
(BENCH_PLUMBING_CALIBRATE, which ran this commit's core with d031ce1's stand-in workers, went with
protocol 3's data link: the stand-in takes its JPEGs from the core's session, as d031ce1's workers did.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from benchmarks import OUT
from encoders.services.pisim.scene import SyntheticScene
from encoders.services.pisim.sources import encode_jpeg

from .db_data import embedded_server, server_versions
from .plumbing_cpu import CORE_THREADS, INGEST_THREADS, postmaster
from .plumbing_procs import clean_env, free_port
from .plumbing_run import Budget, Case, Source, Version, floor, light_workers, pipeline, worker_kind

REPO = Path(__file__).resolve().parents[1]
BASE = os.environ.get("BENCH_PLUMBING_BASE", "d031ce1")
SIZES = {(640, 480): 75, (1920, 1080): 70}  # JPEG quality: about 51 KB and 270 KB of the synthetic scene
CASES = [Case(keys, size, cameras) for keys in (False, True) for size in SIZES for cameras in (1, 8)]
# The issue's latency target: at a camera's 30 frames/s, p99 capture to record no worse than d031ce1's;
# with eight such cameras, what a frame costs where cameras share the services' turns (sizing: ARCHITECTURE.md).
CASES += [Case(True, (640, 480), cameras, fps=30.0) for cameras in (1, 8)]
GROUPS = ("core", *CORE_THREADS, "recorder", "postgres", "ingest", *INGEST_THREADS, "workers", "source")


def chosen(cases: list[Case], wanted: str) -> list[Case]:
    """The cases whose name holds one of ``wanted``'s parts, separated by '|' (all for "")."""
    parts = [w.strip() for w in wanted.split("|")] if wanted.strip() else [""]
    picked = [c for c in cases if any(p in c.name for p in parts)]
    if not picked:
        raise SystemExit(f"BENCH_PLUMBING_CASES={wanted!r} names no case of: {'; '.join(c.name for c in cases)}")
    return picked


def budget_from_env() -> Budget:
    return Budget(
        warmup_s=float(os.environ.get("BENCH_PLUMBING_WARMUP_S", "1.5")),
        frames=int(os.environ.get("BENCH_PLUMBING_FRAMES", "3000")),
        seconds=float(os.environ.get("BENCH_PLUMBING_SECONDS", "5")),
    )


def budget_for(case: Case, budget: Budget) -> Budget:
    """A latency case's window is BENCH_PLUMBING_LATENCY_S (20) seconds, whatever its frames: its p99
    needs a few hundred records at the camera's rate."""
    if not case.latency:
        return budget
    return Budget(budget.warmup_s, 10**9, float(os.environ.get("BENCH_PLUMBING_LATENCY_S", "20")))


@contextmanager
def sources(wanted: set[tuple[tuple[int, int], float]]) -> Iterator[dict[tuple[tuple[int, int], float], Source]]:
    """A pisim per frame size and rate, serving one picture of the synthetic scene as JPEG (quality by
    SIZES), at that rate (0: as fast as it is read)."""
    OUT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="plumbing-sources-", dir=OUT))
    procs = []
    try:
        served = {}
        for (w, h), fps in sorted(wanted):
            quality = SIZES[(w, h)]
            images = folder / f"{w}x{h}-{fps:g}"
            images.mkdir()
            picture = SyntheticScene(w, h, seed=0).render(0.0)
            picture.save(images / "frame.png")
            jpeg = folder / f"{w}x{h}-{fps:g}.jpg"
            jpeg.write_bytes(encode_jpeg(picture, quality))
            port = free_port()
            args = ["--port", str(port), "--source", str(images), "--width", str(w), "--height", str(h)]
            log = open(folder / f"pisim-{w}x{h}-{fps:g}.log", "wb")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(
                [sys.executable, "-m", "encoders", "pisim", *args, "--quality", str(quality), "--fps", f"{fps:g}"],
                env=clean_env(REPO / "src", None),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append((proc, log))
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(
                            f"pisim did not start: {(folder / f'pisim-{w}x{h}-{fps:g}.log').read_text()}"
                        ) from None
                    time.sleep(0.1)
            served[((w, h), fps)] = Source(f"{url}/stream.mjpg", proc.pid, jpeg)
        yield served
    finally:
        for proc, log in procs:
            proc.terminate()
            proc.wait(10)
            log.close()
        shutil.rmtree(folder, ignore_errors=True)


def keys_for(label: str, src: Path, folder: Path) -> Path:
    """The version's own `encoders keys init`, in ``folder``."""
    keys = folder / f"keys-{label}"
    done = subprocess.run(
        [sys.executable, "-m", "encoders", "keys", "init", str(keys)],
        env=clean_env(src, None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`encoders keys init` of {label}: {done.stderr[-2000:]}")
    return keys


def check_code(version: Version) -> str:
    """Where the version's processes import encoders from: its own src/, or the benchmark is wrong."""
    done = subprocess.run(
        [sys.executable, "-c", "import encoders.shared.messages as m; print(m.__file__)"],
        env=clean_env(version.src, None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    where = done.stdout.strip()
    if done.returncode != 0 or not where.startswith(str(version.src)):
        raise RuntimeError(f"{version.label}'s processes import encoders from {where or done.stderr[-500:]}")
    return where


@contextmanager
def base_worktree(commit: str) -> Iterator[Path]:
    """``commit`` checked out (detached) in a temporary folder: `git worktree add`, removed at the end.
    A folder instead of a commit is used as it is: the base exported beforehand (`git archive`), for a
    machine whose copy of the code has no history (benchmarks/gpu/prepare.sh)."""
    if (Path(commit) / "src" / "encoders").is_dir():
        yield Path(commit).resolve()
        return
    folder = Path(tempfile.mkdtemp(prefix=f"plumbing-{commit}-"))
    added = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), commit], capture_output=True, text=True
    )
    if added.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"git worktree add {commit}: {added.stderr.strip()} (a shallow clone? fetch {commit})")
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def measure(
    cases: list[Case], versions: list[Version], budget: Budget, *, with_floor: bool = True
) -> tuple[list[dict], dict]:
    """Every case, each version's pipeline (their order alternating from case to case) and the floor;
    and the database server's versions."""
    out = []
    with ExitStack() as stack:
        served = stack.enter_context(sources({(c.size, c.fps) for c in cases}))
        url, home = stack.enter_context(embedded_server())
        server = server_versions(url)
        print(f"  PostgreSQL {server['postgresql']}, pgvector {server['pgvector']} (embedded)", flush=True)
        db = (url, postmaster(home / ".pgdata"))
        for n, case in enumerate(cases):
            source = served[(case.size, case.fps)]
            size = source.jpeg.stat().st_size
            print(f"  {case.name} (JPEG {size / 1000:.0f} KB, {case.workers} workers)", flush=True)
            result: dict = {"case": case.name, "keys": case.keys, "size": list(case.size), "cameras": case.cameras}
            result.update(workers=case.workers, jpeg_bytes=size, variants={})
            for version in versions if n % 2 == 0 else versions[::-1]:
                got = pipeline(version, case, source, db, budget_for(case, budget))
                result["variants"][version.label] = got
                print(f"    {version.label}: {line(got)}", flush=True)
            if with_floor and not case.latency:  # the floor's feeders have no camera rate
                got = floor(case, source, versions[0].keys, budget, REPO / "src")
                result["variants"]["floor"] = got
                print(f"    floor: {line(got)}", flush=True)
            out.append(result)
    return out, server


def line(got: dict) -> str:
    cpu = got["cpu_ms_per_frame"]
    parts = ", ".join(f"{g} {cpu[g]:.2f}" for g in GROUPS if g in cpu)
    text = f"{got['frames_per_s']:.0f} frames/s ({got['frames']} in {got['seconds']:.1f} s); CPU ms per frame: {parts}"
    if "latency_ms" in got:
        ms = got["latency_ms"]
        text += f"; latency ms p50 {ms['p50']:.1f}, p95 {ms['p95']:.1f}, p99 {ms['p99']:.1f}, max {ms['max']:.1f}"
    return text


def ratio(a: dict, b: dict) -> dict[str, float]:
    """a / b of frames/s and of each group's CPU per frame (where b's is not 0)."""
    out = {"frames_per_s": a["frames_per_s"] / b["frames_per_s"]}
    if "latency_ms" in a and "latency_ms" in b:
        out["latency_p99"] = a["latency_ms"]["p99"] / b["latency_ms"]["p99"]
    for g in GROUPS:
        if b["cpu_ms_per_frame"].get(g):
            out[g] = a["cpu_ms_per_frame"][g] / b["cpu_ms_per_frame"][g]
    return out


def ratios(results: list[dict], this: str, base: str) -> None:
    """this / base, case by case, and the core's CPU per frame against the floor's."""
    for r in results:
        r["ratio"] = ratio(r["variants"][this], r["variants"][base])
        if "floor" in r["variants"]:
            bare = r["variants"]["floor"]["cpu_ms_per_frame"]["core"]
            r["core_over_floor"] = {
                label: r["variants"][label]["cpu_ms_per_frame"]["core"] / bare for label in (this, base)
            }


def print_tables(results: list[dict], this: str, base: str) -> None:
    cols = ("frames/s", "core", "main", "zmq io", "recorder", "postgres", "ingest", "workers")
    keys = ("frames_per_s", "core", "core_main", "core_zmq_io", "recorder", "postgres", "ingest", "workers")
    print(f"\nPer case: frames/s, then CPU ms per embedded frame ({this} / {base} / floor)")
    print(f"{'case':40} {'':8} " + " ".join(f"{c:>9}" for c in cols))
    for r in results:
        for label, got in r["variants"].items():
            values = [got["frames_per_s"], *(got["cpu_ms_per_frame"].get(k, float("nan")) for k in keys[1:])]
            print(f"{r['case']:40} {label:8} " + " ".join(f"{v:9.2f}" for v in values))
    print(f"\nRatios {this} / {base}, measured side by side (frames/s: higher is better; CPU per frame: lower)")
    print(f"{'case':40} " + " ".join(f"{c:>9}" for c in cols) + f" {'core/floor':>12}")
    for r in results:
        floor_ratio = r.get("core_over_floor", {})
        tail = f"{floor_ratio[this]:5.1f} /{floor_ratio[base]:5.1f}" if floor_ratio else ""
        print(f"{r['case']:40} " + " ".join(f"{r['ratio'].get(k, float('nan')):9.2f}" for k in keys) + f" {tail:>12}")
    timed = [r for r in results if "latency_p99" in r["ratio"]]
    if timed:
        print(f"\nLatency, capture to record (at a subscriber), ms: p50 / p95 / p99 / max ({this}, then {base})")
        for r in timed:
            for label in (this, base):
                ms = r["variants"][label]["latency_ms"]
                row = " / ".join(f"{ms[k]:.1f}" for k in ("p50", "p95", "p99", "max"))
                print(f"{r['case']:40} {label:8} {row}  ({ms['n']} records)")
                for part, ms in r["variants"][label]["latency_parts_ms"].items():
                    row = " / ".join(f"{ms[k]:.1f}" for k in ("p50", "p95", "p99", "max"))
                    print(f"{'':40} {'':8} {row}  {part.replace('_', ' ')}")
            print(f"{r['case']:40} p99 {this} / {base}: {r['ratio']['latency_p99']:.2f}")


def has_none_runtime(root: Path) -> bool:
    """Whether a version's workers run `encoders encode --runtime none`; a version before it (d031ce1) gets
    the stand-in, which speaks that version's protocol. SystemExit for one that has it without
    ENCODERS_NONE_DECODE when BENCH_PLUMBING_WORKERS=light asks for it."""
    config = root / "services" / "encoder" / "config.py"
    text = config.read_text() if config.exists() else ""
    if '"none"' not in text:
        return False
    if light_workers() and "none_decode" not in text:
        raise SystemExit(f"{root}: --runtime none without ENCODERS_NONE_DECODE; BENCH_PLUMBING_WORKERS=light needs it")
    return True


def this_commit(repo: Path = REPO) -> tuple[str, bool]:
    """This checkout's commit, and whether it has changes not committed. A copy without its history (on a
    GPU box) is named by BENCH_PLUMBING_CODE instead (benchmarks/gpu/run.sh: what prepare.sh wrote)."""
    git = ["git", "-C", str(repo)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    except OSError:  # no git at all
        return os.environ.get("BENCH_PLUMBING_CODE", "unknown (no git here)"), False
    if head.returncode != 0:
        return os.environ.get("BENCH_PLUMBING_CODE", "unknown (no git history here)"), False
    return head.stdout.strip(), bool(status.stdout.strip())


def main() -> dict:
    started = time.perf_counter()
    budget = budget_from_env()
    cases = chosen(CASES, os.environ.get("BENCH_PLUMBING_CASES", ""))
    head, dirty = this_commit()
    this_label, base_label = "this", Path(BASE).name
    with ExitStack() as stack:
        keys_folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plumbing-keys-")))
        base_tree = stack.enter_context(base_worktree(BASE))
        versions = []
        for label, root in ((this_label, REPO), (base_label, base_tree)):
            version = Version(label, root / "src", keys_for(label, root / "src", keys_folder), has_none_runtime(root))
            check_code(version)
            versions.append(version)
        print(
            f"this commit {head}{' (with changes not committed)' if dirty else ''} against "
            f"{BASE}; {len(cases)} cases, workers {worker_kind()}; each window {budget.frames} frames or "
            f"{budget.seconds:g} s after {budget.warmup_s:g} s of warm-up",
            flush=True,
        )
        results, server = measure(cases, versions, budget)
    ratios(results, this_label, base_label)
    print_tables(results, this_label, base_label)
    return {
        "this": head,
        "this_dirty": dirty,
        "base": base_label,
        "workers": worker_kind(),
        "budget": vars(budget),
        "server": server,
        "cases": results,
        "seconds": time.perf_counter() - started,
    }
