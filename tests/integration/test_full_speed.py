"""The plumbing at full speed (issue #21), every service a real process: the core, the recorder
with the embedded PostgreSQL, a camera (pisim) read as fast as a lossless ingest takes it, workers
that run no model (ENCODERS_RUNTIME=none), so that the pipeline goes as fast as its plumbing.

A worker cut off (SIGSTOP) while it holds several batches: its frames are counted lost within
the heartbeat timeout, the other worker goes on, and none of its frames is stored twice, also
when it wakes up and sends the results of what it held.

A recorder stopped (SIGSTOP) for 60 s: the core holds what it cannot deliver (spooling past
--hold-records), the recorder, woken, stores the backlog faster than the camera adds to it, and
every frame embedded is stored once, the totals adding up.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import psycopg
import pytest
import zmq

from encoders.shared import zmqio
from encoders.shared.messages import Stats

from ..conftest import Service, Sockets, wait_for
from .pipeline import Pipeline, totals

HEARTBEAT_S = 1.0  # the sessions' default (shared/settings.py SessionSettings)
# Missed heartbeats before a session is over: more than the default 3, so that a core starved of
# the CPU for a few seconds on a loaded 2-core machine (logged as a 'core_stall') does not cost
# sessions and frames here; a stopped service is still counted gone within MISSES seconds.
MISSES = 8
TIMEOUT_S = HEARTBEAT_S * MISSES
# Every frame of a worker without a model has a vector of its own (a hash of its JPEG): far from
# the last, so that each would be a keyframe and go into the HNSW index, which costs PostgreSQL
# milliseconds a row. A camera's frames are seldom keyframes; so here: one per --keyframe-max-s.
NO_KEYFRAMES = ("--keyframe-drift", "2")
# ...but a scene change is always a keyframe too (and a snapshot wanted), and to the core's scene rule
# (a drift of 0.25 or more) every such frame is one. So the core's rules go off too: with every frame a
# keyframe, PostgreSQL's HNSW inserts are the recorder's pace (a few hundred rows/s, fewer on a busy box),
# and every frame asks its ingest for a snapshot's picture.
NO_SCENES = ("--scene-threshold", "0", "--scene-k", "0")
COUNTS = ("published", "embedded", "dropped", "skipped", "lost")


def stored(pipeline: Pipeline) -> dict[str, list[int]]:
    """Each stream's seqs stored in PostgreSQL for this run, in order (duplicates included)."""
    assert pipeline.run_dir is not None
    with psycopg.connect(pipeline.database) as conn:
        rows = conn.execute(
            "SELECT f.stream, f.seq FROM frames f JOIN runs r ON r.id = f.run_id WHERE r.name = %s "
            "ORDER BY f.stream, f.seq",
            (pipeline.run_dir.name,),
        ).fetchall()
    out: dict[str, list[int]] = {}
    for stream, seq in rows:
        out.setdefault(stream, []).append(seq)
    return out


def n_stored(pipeline: Pipeline) -> int:
    """Rows stored for this run so far (0 before the recorder made its tables)."""
    assert pipeline.run_dir is not None
    with psycopg.connect(pipeline.database) as conn:
        try:
            row = conn.execute(
                "SELECT count(*) FROM frames f JOIN runs r ON r.id = f.run_id WHERE r.name = %s",
                (pipeline.run_dir.name,),
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


class CoreStats:
    """The core's Stats (once a second per stream, on its metrics publisher), the latest kept."""

    def __init__(self, sockets: Sockets, pipeline: Pipeline) -> None:
        self.sub = sockets.connect(zmq.SUB, pipeline.metrics_pub, subscribe=[b"stats/"])
        self.latest: dict[str, dict] = {}

    def read(self) -> dict[str, dict]:
        while self.sub.poll(0):
            msg, _ = zmqio.receive(self.sub, topic=True)
            if isinstance(msg, Stats) and msg.service == "metrics":
                self.latest[msg.stream] = msg.counters
        return self.latest

    def shared(self) -> dict:
        """The core's own counters (the same in every stream's Stats): the latest."""
        latest = self.read()
        return max(latest.values(), key=lambda c: c.get("records_sent") or 0) if latest else {}


def undelivered(ingest: Service) -> int:
    """Frames the ingest read and never sent, by its last line: a lossless ingest stopped while it
    waited for credit keeps the frame it read (counted dropped by the core, never silently gone)."""
    found = re.findall(r"(\d+) undelivered", ingest.output())
    assert found, ingest.output()[-2000:]
    return int(found[-1])


def check_stopped_run(pipeline: Pipeline, done) -> dict[str, dict]:
    """After `encoders stop`: every service exited 0; summary.json's totals = the rows in PostgreSQL
    = the stop's totals; published = embedded + dropped + skipped + lost; every seq stored once."""
    stop_totals: dict[str, dict] = {stream: dict(c) for stream, c in totals(done).items()}  # read by key name
    for svc in pipeline.service.started:
        if svc.args[0] != "pisim":
            assert svc.wait(60) == 0, f"{svc.args[0]}: " + svc.output()[-3000:]
    assert pipeline.run_dir is not None
    summary = json.loads((pipeline.run_dir / "summary.json").read_text())["streams"]
    rows = stored(pipeline)
    assert set(summary) == set(stop_totals) == set(rows), (set(summary), set(stop_totals), set(rows))
    for stream, counts in stop_totals.items():
        seqs = rows[stream]
        assert len(seqs) == len(set(seqs)), f"{stream}: a frame stored twice"
        f = summary[stream]["frames"]
        assert {k: f[k] for k in COUNTS} == {k: counts[k] for k in COUNTS}, (stream, f, counts)
        assert counts["published"] == counts["embedded"] + counts["dropped"] + counts["skipped"] + counts["lost"]
        assert counts["embedded"] == summary[stream]["db_rows"] == summary[stream]["records"] == len(seqs), stream
    return stop_totals


@pytest.fixture
def pipeline(service, tmp_path, database) -> Pipeline:
    env = {
        "ENCODERS_HEARTBEAT_S": str(HEARTBEAT_S),
        "ENCODERS_HEARTBEAT_MISSES": str(MISSES),
        "PYTHONFAULTHANDLER": "1",  # a service that aborts (a C library's assertion) says where
    }
    return Pipeline(service, {"ENCODERS_RUNTIME": "none"}, tmp_path, database, stream_dirs=True, env=env)


def full_speed(pipeline: Pipeline, cameras: int) -> dict[str, Service]:
    """Cameras read as fast as their lossless ingests take them (pisim --fps 0): each stream's ingest."""
    return {f"cam{i}": pipeline.start_ingest(i, pipeline.start_camera(i, fps=0), "--lossless") for i in range(cameras)}


BATCH = 16  # the cut worker's batch: it offers the core two of them (its capacity)


def core_said(core: Service, pattern: str) -> list[re.Match]:
    return list(re.finditer(pattern, core.output()))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_worker_cut_off_holding_batches_costs_its_frames_within_the_heartbeat_timeout_and_nothing_twice(
    pipeline, sockets
):
    core = pipeline.start_core(*NO_SCENES)
    pipeline.start_recorder(*NO_KEYFRAMES)
    pipeline.start_worker("w0", batch_size=BATCH)
    cut = pipeline.start_worker("w1", batch_size=BATCH)
    stats = CoreStats(sockets, pipeline)
    (ingest,) = full_speed(pipeline, cameras=1).values()
    # At full speed, until w1 has earned its whole window (capacity: two batches) and uses it.
    wait_for(lambda: n_stored(pipeline) >= 500, 90, "the recorder to store 500 rows")
    wait_for(lambda: (stats.shared().get("in_use") or 0) > 2 * BATCH, 30, "the workers to hold more than a batch each")

    cut.proc.send_signal(signal.SIGSTOP)  # alive, its connection open, silent: cut off
    started = time.monotonic()
    left = r"worker w1 left \(silent for ([\d.]+) s, past the [\d.]+ s timeout\): (\d+) frames it held lost"
    try:
        found = wait_for(lambda: core_said(core, left), TIMEOUT_S + 30, "the core to count w1 gone")
        counted_in = time.monotonic() - started
        silent, held = float(found[0].group(1)), int(found[0].group(2))
        # The other worker goes on alone: rows keep coming while w1 is still stopped.
        rows = n_stored(pipeline)
        wait_for(lambda: n_stored(pipeline) >= rows + 200, 60, "w0 alone to have 200 more rows stored")
    finally:
        cut.proc.send_signal(signal.SIGCONT)  # it wakes with the results of what it held: too late
    print(f"w1 held {held} frames at the cut; counted lost {counted_in:.2f} s after (timeout {TIMEOUT_S:g} s)")
    assert held > BATCH, f"w1 held {held} frames: not several batches"
    # Within the timeout, as the core measured the silence (this test's clock also counts its own polling of
    # the log, which a busy machine slows): past it by at most a turn of the core's loop, under a heartbeat.
    assert counted_in >= TIMEOUT_S - HEARTBEAT_S, counted_in
    assert TIMEOUT_S - 0.1 <= silent <= TIMEOUT_S + HEARTBEAT_S, silent  # logged to a tenth of a second
    # It comes back as a new life of its session and works again.
    wait_for(lambda: len(core_said(core, r"worker w1 joined")) >= 2, 60, "w1 to join again after SIGCONT")
    rows = n_stored(pipeline)
    wait_for(lambda: n_stored(pipeline) >= rows + 200, 60, "200 more rows after w1 came back")
    after = stats.shared()

    done = pipeline.stop(timeout=120)
    assert done.returncode == 0, f"{done.stderr}\ncore:\n{core.output()[-6000:]}\ningest:\n{ingest.output()[-3000:]}"
    counts = check_stopped_run(pipeline, done)["cam0"]
    seqs = stored(pipeline)["cam0"]
    # Lossless, every JPEG whole: nothing dropped but what the ingest never sent (never numbered).
    assert (counts["skipped"], counts["dropped"]) == (0, undelivered(ingest)), counts
    numbered = counts["published"] - counts["dropped"]  # one epoch, from seq 0
    missing = sorted(set(range(numbered)) - set(seqs))
    assert counts["lost"] == held == len(missing), (counts, held, missing[:20])
    assert missing[-1] - missing[0] < 10 * held, "the frames lost are not those w1 held at the cut"
    print(f"{counts}; stale results refused: {after.get('unexpected_results')}, {after.get('unknown_sessions')}")


OUTAGE_S = 60.0  # the recorder stopped this long (issue #21)
HOLD = 5_000  # records the core holds in memory for the recorder: past it, the oldest are spooled


def rss_peak_mb(svc: Service) -> float:
    """A live process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{svc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {svc.args[0]}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_recorder_stopped_for_60_s_at_full_speed_loses_nothing_and_catches_up(pipeline, sockets):
    core = pipeline.start_core("--hold-records", str(HOLD), *NO_SCENES)
    recorder = pipeline.start_recorder(*NO_KEYFRAMES)
    pipeline.start_worker("w0", batch_size=BATCH)
    pipeline.start_worker("w1", batch_size=BATCH)
    stats = CoreStats(sockets, pipeline)
    (ingest,) = full_speed(pipeline, cameras=1).values()
    wait_for(lambda: n_stored(pipeline) >= 500, 90, "the recorder to store 500 rows")
    # The pipeline's own pace, the recorder keeping up: rows stored a second, over 1,000 rows.
    rows, started = n_stored(pipeline), time.monotonic()
    wait_for(lambda: n_stored(pipeline) >= rows + 1000, 90, "1,000 more rows stored")
    pace = (n_stored(pipeline) - rows) / (time.monotonic() - started)

    recorder.proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # The core holds what the recorder does not take, spooling past HOLD; the pipeline goes on.
        wait_for(lambda: (stats.shared().get("records_spooled") or 0) > 0, OUTAGE_S, "the core to spool records")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
        at_wake = stats.read()["cam0"]
    finally:
        recorder.proc.send_signal(signal.SIGCONT)
    woken_at = time.monotonic()
    stored_at_wake = n_stored(pipeline)
    backlog = at_wake["embedded"] - stored_at_wake
    print(f"pace {pace:.0f} rows/s; after {woken_at - stopped_at:.0f} s stopped: {at_wake}; backlog {backlog} rows")
    assert backlog > 10 * pace, "the outage left no backlog worth the name"

    # Woken, it stores the backlog: every row embedded by the time it woke.
    wait_for(lambda: n_stored(pipeline) >= at_wake["embedded"], 300, "the recorder to store its backlog")
    caught_up = time.monotonic() - woken_at
    rate = (n_stored(pipeline) - stored_at_wake) / caught_up
    print(f"backlog of {backlog} rows stored in {caught_up:.1f} s: {rate:.0f} rows/s (pace {pace:.0f} rows/s)")
    assert recorder.proc.poll() is None, recorder.output()[-3000:]
    # Faster than the camera adds rows: it gains on the live stream, so it does catch up.
    assert rate > pace, (rate, pace)
    # One new life of its session on waking (the core had counted it gone), none while it caught up.
    assert len(core_said(core, r"recorder \S+ joined")) == 2, core.output()[-3000:]
    peak = rss_peak_mb(recorder)
    core_peak = rss_peak_mb(core)

    done = pipeline.stop(timeout=300)
    assert done.returncode == 0, (
        f"{done.stderr}\nrecorder:\n{recorder.output()[-6000:]}\ncore:\n{core.output()[-3000:]}"
    )
    counts = check_stopped_run(pipeline, done)["cam0"]
    seqs = stored(pipeline)["cam0"]
    # Lossless, no worker lost: every frame numbered is stored, once.
    assert (counts["skipped"], counts["lost"], counts["dropped"]) == (0, 0, undelivered(ingest)), counts
    assert seqs == list(range(counts["published"] - counts["dropped"])), "a frame missing or twice"
    print(f"{counts}; peak memory: recorder {peak:.0f} MB, core {core_peak:.0f} MB")
