"""CPU time of the plumbing benchmark's processes: per process (with its children), and the core's
and the ingests' per thread, the main thread (the one whose id is the process's) apart from ZeroMQ's
I/O threads (libzmq names them ZMQbg/IO/N) and the rest (ZMQbg/Reaper, Python's threads: the
ingest's camera reader, the exporter's, ZAP's).

psutil finds the processes and their threads; each thread's time on a CPU is read from
/proc/PID/task/TID/schedstat, in nanoseconds (user and kernel time together, as the scheduler
accounts it). psutil's own times count 10 ms ticks, coarse for a window of a hundred 1080p frames
(a tick is 0.1 ms a frame there); they are used where schedstat is missing. A thread that ends
within a window takes its time with it: the services' threads live as long as they do.

``snapshot`` reads every group's CPU seconds at one moment; ``per_frame`` turns two snapshots and
the frames embedded between them into milliseconds per frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

THREADS = ("main", "zmq_io", "other")
CORE_THREADS = tuple(f"core_{t}" for t in THREADS)
INGEST_THREADS = tuple(f"ingest_{t}" for t in THREADS)  # every ingest's together


def task_seconds(pid: int, tid: int) -> float | None:
    """A thread's time on a CPU so far (schedstat), or None where the kernel does not say."""
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def threads(proc: psutil.Process) -> list[tuple[int, float]]:
    """(thread id, CPU seconds) of each of a process's threads."""
    out = []
    for t in proc.threads():
        seconds = task_seconds(proc.pid, t.id)
        out.append((t.id, t.user_time + t.system_time if seconds is None else seconds))
    return out


def _cpu(proc: psutil.Process) -> float:
    return sum(seconds for _, seconds in threads(proc))


def tree_cpu(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds of each process of ``pids`` and of each of its descendants, by pid (gone: left out)."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
        for p in family:
            try:
                out[p.pid] = _cpu(p)
            except psutil.Error:
                pass
    return out


def thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return ""


def thread_groups(pids: Iterable[int], service: str) -> tuple[dict[str, float], dict[int, float]]:
    """CPU seconds of these processes' main threads, ZeroMQ's I/O threads and every other thread,
    summed over the processes, as ``<service>_main``, ``<service>_zmq_io`` and ``<service>_other``;
    and each process's total, by pid, from the same reading (so that the parts add up to it)."""
    out = dict.fromkeys((f"{service}_{t}" for t in THREADS), 0.0)
    totals: dict[int, float] = {}
    for pid in pids:
        try:
            tasks = threads(psutil.Process(pid))
        except psutil.Error:
            continue
        for tid, seconds in tasks:
            if tid == pid:
                group = "main"
            elif thread_name(pid, tid).startswith("ZMQbg/IO"):
                group = "zmq_io"
            else:
                group = "other"
            out[f"{service}_{group}"] += seconds
        totals[pid] = sum(seconds for _, seconds in tasks)
    return out, totals


def snapshot(groups: Mapping[str, Iterable[int]], core: int) -> dict[str, dict[int, float] | float]:
    """Each group's processes' CPU seconds by pid (with their children), and the core's and the
    ingests' threads. Their totals are the sums of their threads, read once (they have no children)."""
    shot: dict[str, dict[int, float] | float] = {
        name: tree_cpu(pids) for name, pids in groups.items() if name not in ("core", "ingest")
    }
    for service, pids in (("core", [core]), ("ingest", groups.get("ingest", ()))):
        by_thread, totals = thread_groups(pids, service)
        shot.update(by_thread)
        shot[service] = totals
    return shot


def per_frame(before: Mapping, after: Mapping, frames: int) -> dict[str, float]:
    """CPU milliseconds per frame of each group between two snapshots. A process that started in
    between counts from zero; one that ended in between is left out (none should, in a window)."""
    out = {}
    for name, now in after.items():
        then = before.get(name)
        if isinstance(now, dict):
            then = then if isinstance(then, dict) else {}
            seconds = sum(cpu - then.get(pid, 0.0) for pid, cpu in now.items())
        else:
            seconds = now - (then or 0.0)
        out[name] = 1000 * seconds / frames if frames else float("nan")
    return out


def postmaster(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL server whose data folder is ``pgdata`` (its postmaster.pid's first line)."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
