"""The recorder process benchmark: `encoders record` as a process, fed metrics records over its
session with the core (played by the tests' stand-in, tests/fake_core.py) as fast as it acknowledges
them; embeddings/s until every row is committed and acknowledged."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg
import zmq

from benchmarks import OUT
from encoders.shared import messages, zmqio
from encoders.shared.messages import Bye, EndOfStream, Hello, Message, MetricsRecord, StreamStart
from tests.fake_core import FakeCore

from .db_data import STREAMS, Video, new_database, scalar

PROCESS_TRIES = 3
PROCESS_RUNS = 5  # the process benchmark records this many runs' cameras at once: 10 streams
POLL_S = 0.01  # how often the benchmark looks at the core's progress (the core's thread times it)


def prepare(msg: Message) -> tuple[Message, list]:
    """A StreamStart, MetricsRecord or EndOfStream with its wire form, encoded before the clock starts:
    what is measured is the recorder, not the sender (on two cores, encoding as it sends would take CPU
    from the recorder and the server)."""
    return msg, messages.encode(msg)


def until(proc: subprocess.Popen, done: Callable[[], object], timeout_s: float, waiting: str) -> None:
    """Until ``done()``; RuntimeError if the recorder exits first, or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if proc.poll() is not None:
            raise RuntimeError(f"the recorder exited ({proc.returncode}) while the core waited for {waiting}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {waiting} in time")
        time.sleep(POLL_S)


def kept_its_session(core: FakeCore) -> None:
    """RuntimeError unless the recorder kept one session throughout: had it counted the core gone, said
    Hello again and been sent the records again, its figure would mean nothing."""
    if len(core.messages(Hello)) != 1:
        raise RuntimeError("the recorder said Hello again: it counted the core gone and lost its session")
    if core.counts["bad_messages"] or core.counts["unknown_sessions"]:
        raise RuntimeError(f"the recorder sent messages that do not decode, or from another session: {core.counts}")


@contextmanager
def process_runs_dir() -> Iterator[Path]:
    """Where the recorder process writes its run folders: beside the benchmark's output, as a
    user's recorder writes to ./runs, and not in the temporary folder. On this benchmark's
    machine (a VM) creating a file anywhere under /tmp costs 0.4-0.8 ms of kernel time against
    0.03 ms elsewhere on the same disk, which would count against the recorder (one npz file
    per 100 records)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="process-runs-", dir=OUT))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def recorder_process(url: str, runs_dir: Path, video: Video, frames: int, *, name: str = "process") -> dict:
    """`encoders record` as a process: the first ``frames`` of the video (the cameras of the first
    PROCESS_RUNS runs, as that many times two streams) delivered as metrics records by a stand-in
    for the core (tests/fake_core.py: the recorder's session, and the core's own delivery, with its
    window of records not yet acknowledged); embeddings/s from the first record sent to the
    acknowledgement that makes the last one durable (its row committed). Then Stop: the recorder
    finishes the run (its last npz, summary.json), says Bye and exits; how long that took is
    ``stop_seconds``, not counted."""
    db_url = new_database(url, name)
    # The first frames of each stream, the same number from each, whatever the video's size.
    per_stream = frames // (PROCESS_RUNS * STREAMS)
    chosen = np.flatnonzero((video.run <= PROCESS_RUNS) & (video.seq < per_stream))
    # As cameras recording at once: interleaved by time of day (each stream stays in seq order).
    order = chosen[np.argsort(video.t[chosen] - (video.run[chosen] - 1) * 86400, kind="stable")]
    streams = sorted({(int(video.run[i]), int(video.stream[i])) for i in order})
    ctx = zmq.Context()
    router = zmqio.open_socket(ctx, zmq.ROUTER, "tcp://127.0.0.1:0", bind=True, linger=0)
    core = FakeCore(router, roles={"recorder"}, name="bench-core")
    log_path = runs_dir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the process writes to it until it is stopped
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "encoders",
            "record",
            "--core",
            core.endpoint,
            "--database-url",
            db_url,
            "--runs-dir",
            str(runs_dir),
            "--frames",
            "none",  # no snapshots: records only
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        prepared = [prepare(StreamStart(f"r{run}cam{stream}", 0)) for run, stream in streams]
        for i in order:
            prepared.append(
                prepare(
                    MetricsRecord(
                        stream=f"r{int(video.run[i])}cam{int(video.stream[i])}",
                        seq=int(video.seq[i]),
                        t_capture=float(video.t[i]),
                        t_encoded=float(video.t[i]),
                        worker="bench",
                        model="synthetic/none",
                        similarity=0.99,
                        drift=0.01,
                        vector=video.vectors[i],
                        rolling={"count": 300, "mean": 0.01, "std": 0.002},
                        core=core.name,
                    )
                )
            )
        for run, stream in streams:
            last = int(video.seq[order][(video.run[order] == run) & (video.stream[order] == stream)].max())
            prepared.append(prepare(EndOfStream(f"r{run}cam{stream}", last, {"embedded": last + 1})))
        until(proc, core.joined, 120, "the recorder's Ready")
        core.deliver_all(prepared)
        until(proc, core.settled, 600, "the recorder's acknowledgements")
        assert core.first_sent_at is not None and core.last_acked_at is not None
        elapsed = core.last_acked_at - core.first_sent_at
        kept_its_session(core)
        stopping = time.perf_counter()
        core.stop("the benchmark is over")  # the recorder finishes its run, says Bye and exits
        until(proc, lambda: core.messages(Bye), 120, "the recorder's Bye")
        code = proc.wait(timeout=120)
        stop_seconds = time.perf_counter() - stopping
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{exc}; the recorder's log ends:\n{log_path.read_text()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        core.close()
        router.close(0)
        ctx.term()
        log.close()
    assert code == 0, log_path.read_text()[-3000:]
    with psycopg.connect(db_url) as conn:
        stored = scalar(conn, "SELECT count(*) FROM frames")
    assert stored == len(order), (stored, len(order))
    return {
        "rows": stored,
        "streams": len(streams),
        "seconds": elapsed,
        "rows_per_s": stored / elapsed,
        "stop_seconds": stop_seconds,
    }
