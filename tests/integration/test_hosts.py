"""The pipeline on several hosts (network namespaces on one bridge: tests/hosts.py), each service
given only the core's address, as the README's "Running on several machines" section has it (issue #11).

Every test asserts that the counts add up (published = embedded + dropped + skipped + lost)
and that every embedded frame is a row, once. Times are waited for as conditions, with deadlines
only against a hang; a bound on latency is in the run's own unit, the time a worker takes for a
batch on this machine (issue #23: a bound in seconds held on one machine only).
"""

from __future__ import annotations

import itertools
import json
import re
import time

import numpy as np
import pytest

from encoders.shared import keys, zmqio
from encoders.shared.messages import FrameCounts, Message, MetricsRecord, rows_of

from ..conftest import Service, Sockets, wait_for
from ..hosts import Hosts, hosts  # noqa: F401 - the fixture
from .pipeline import Pipeline, subscribe, totals

pytestmark = pytest.mark.netns

HEARTBEAT_TIMEOUT_S = 3.0  # ENCODERS_HEARTBEAT_S x ENCODERS_HEARTBEAT_MISSES, the defaults


@pytest.fixture
def pipeline(service, tiny_model, tmp_path, database, hosts: Hosts) -> Pipeline:  # noqa: F811
    """The core binds every interface of its host: with keys, as a user must (shared/keys.py)."""
    keys.init(tmp_path / "keys")
    env = {"ENCODERS_KEYS": str(tmp_path / "keys")}
    return Pipeline(service, tiny_model, tmp_path, database, max_wait=10.0, core_host=hosts.add("core"), env=env)


@pytest.fixture(scope="module")
def heavy_model(tiny_model, tmp_path_factory) -> dict:
    """A CLIP image tower that costs a worker tens of milliseconds a frame on torch, whatever the
    machine: two workers then cannot keep up with eight cameras (tiny-clip can, on OpenVINO)."""
    import open_clip
    import torch

    from ..conftest import TINY_CLIP

    folder = tmp_path_factory.mktemp("heavy-clip")
    config = folder / "heavy-clip.json"
    vision = {"image_size": 224, "layers": 6, "width": 512, "head_width": 64, "patch_size": 32}
    config.write_text(json.dumps({**TINY_CLIP, "vision_cfg": vision}))
    open_clip.add_model_config(config)
    checkpoint = folder / "heavy-clip.pt"
    torch.save({"state_dict": open_clip.create_model("heavy-clip", pretrained=None).state_dict()}, checkpoint)
    return {
        **tiny_model,
        "ENCODERS_MODEL": str(config),
        "ENCODERS_PRETRAINED": str(checkpoint),
        "ENCODERS_RUNTIME": "torch",
    }


class Watch:
    """The core's records as a viewer on this host receives them, each with when it arrived."""

    def __init__(self, sockets: Sockets, pipeline: Pipeline) -> None:
        self.sub = subscribe(sockets, pipeline.metrics_pub, keys.client(pipeline.env["ENCODERS_KEYS"], "viewer"))
        self.seen: list[tuple[float, Message]] = []

    def until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            if self.sub.poll(100):
                got, _ = zmqio.receive(self.sub, topic=True)
                if got is not None:
                    t = time.monotonic()
                    self.seen += [(t, msg) for msg in rows_of(got)]  # a Records: its records

    def for_s(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.until(lambda: time.monotonic() >= end, seconds + 1, "time to pass")

    def records(self, since: float = 0.0) -> list[MetricsRecord]:
        return [m for t, m in self.seen if t >= since and isinstance(m, MetricsRecord)]

    def longest_silence(self, start: float, end: float) -> float:
        """The longest time between records arriving within [start, end]."""
        times = [start] + [t for t, m in self.seen if start <= t <= end and isinstance(m, MetricsRecord)] + [end]
        return max(b - a for a, b in itertools.pairwise(times))


def frames_read(ingest: Service) -> int:
    found = re.findall(r"(\d+) frames read", ingest.output())
    assert found, ingest.output()[-2000:]
    return int(found[-1])


def stop_and_check(pipeline: Pipeline, ingests: dict[str, Service]) -> dict[str, FrameCounts]:
    """`encoders stop` from this host (its totals read as JSON, by name); every service exits 0; each
    stream's counts add up to the frames its ingest read; every embedded frame is one row."""
    done = pipeline.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    for svc in pipeline.service.started:
        if svc.args[0] != "pisim":
            assert svc.wait(60) == 0, f"{svc.args[0]}: " + svc.output()[-3000:]
    said = totals(done)
    rows = pipeline.rows()
    assert len({(r[0], r[1]) for r in rows}) == len(rows), "a frame stored twice"
    for stream, ingest in ingests.items():
        c = said[stream]
        assert c["published"] == c["embedded"] + c["dropped"] + c["skipped"] + c["lost"], c
        assert c["published"] == frames_read(ingest), (stream, c)
        assert c["embedded"] == sum(r[0] == stream for r in rows), "an embedded frame is not a row"
    return said


@pytest.mark.timeout(240)
def test_a_worker_host_cut_for_20_s_stalls_nothing_and_rejoins(pipeline, hosts, sockets):  # noqa: F811
    w0, w1, cam = hosts.add("w0"), hosts.add("w1"), hosts.add("cam0")
    watch = Watch(sockets, pipeline)
    pipeline.start_core()
    pipeline.start_recorder()
    pipeline.start_worker("w0", host=w0)
    pipeline.start_worker("w1", host=w1)
    ingest = pipeline.start_ingest(0, pipeline.start_camera(0, fps=15, host=cam), host=cam)
    watch.until(lambda: {r.worker for r in watch.records()} == {"w0", "w1"}, 60, "both workers' records")
    cut = time.monotonic()
    hosts.cut(w1)
    watch.for_s(20)
    mended = time.monotonic()
    hosts.mend(w1)
    # Records kept flowing: no wait for the missing frames beyond the worker's heartbeats.
    silence = watch.longest_silence(cut, mended)
    assert silence < HEARTBEAT_TIMEOUT_S + 2.5, f"records stopped for {silence:.1f} s"
    assert {r.worker for r in watch.records(cut + HEARTBEAT_TIMEOUT_S + 1)} == {"w0"}
    watch.until(lambda: "w1" in {r.worker for r in watch.records(mended)}, 30, "w1 to rejoin and embed again")
    stop_and_check(pipeline, {"cam0": ingest})


class Log:
    """What a service has logged since ``mark()``."""

    def __init__(self, svc: Service) -> None:
        self.svc, self.at = svc, 0

    def mark(self) -> None:
        self.at = len(self.svc.output())

    def since(self) -> str:
        return self.svc.output()[self.at :]


UNDELIVERED = re.compile(r"(\d+) undelivered, .*; not joined")  # the ingest's summary line, the core away
REJOINED = re.compile(r"joined: stream cam0 from (\d+)(?:, (\d+) captures undelivered meanwhile \(dropped\))?")


@pytest.mark.timeout(240)
def test_the_core_host_cut_until_everyone_gave_it_up_recovers_and_loses_nothing_embedded(pipeline, hosts, sockets):  # noqa: F811
    w0, cam = hosts.add("w0"), hosts.add("cam0")
    watch = Watch(sockets, pipeline)
    core = Log(pipeline.start_core())
    pipeline.start_recorder()  # beside the core: cut off with it, never from it
    worker = Log(pipeline.start_worker("w0", host=w0))
    ingest_svc = pipeline.start_ingest(0, pipeline.start_camera(0, fps=15, host=cam), host=cam)
    ingest = Log(ingest_svc)
    watch.until(lambda: len(watch.records()) >= 20, 60, "records")
    assert pipeline.core_host is not None
    for log in (core, worker, ingest):
        log.mark()
    hosts.cut(pipeline.core_host)
    # The cut is an outage to everyone, which is what this test is about: it lasts until each side
    # has counted the other gone (the heartbeat timeout, however long the machine takes to notice),
    # and the camera's frames read meanwhile are counted undelivered, not sent into the void.
    wait_for(
        lambda: (
            "worker w0 left (silent for" in core.since()
            and "of stream cam0 left: silent for" in core.since()
            and "has been silent for" in worker.since()
            and "has been silent for" in ingest.since()
        ),
        60,
        "the core, the worker and the ingest to count each other gone",
    )
    wait_for(
        lambda: any(int(n) > 0 for n in UNDELIVERED.findall(ingest.since())),
        60,
        "the ingest to count frames it read with the core away as undelivered",
    )
    for log in (core, worker, ingest):
        log.mark()
    hosts.mend(pipeline.core_host)
    mended = time.monotonic()
    # Everyone rejoins by itself: the camera in a new epoch (drift never spans the cut), telling
    # the core what it could not deliver; the worker embeds again.
    rejoined = wait_for(lambda: REJOINED.search(core.since()), 60, "the ingest to rejoin the core")
    first_seq, undelivered = int(rejoined[1]), int(rejoined[2] or 0)
    assert undelivered > 0, rejoined[0]
    watch.until(
        lambda: len([r for r in watch.records(mended) if r.seq >= first_seq and r.worker == "w0"]) >= 20,
        60,
        "records of the new epoch once the core is back",
    )
    said = stop_and_check(pipeline, {"cam0": ingest_svc})
    # What the camera gave while the core was away is counted (dropped), never silently missing.
    assert said["cam0"]["dropped"] >= undelivered, said["cam0"]


def batch_ends(records: list[MetricsRecord]) -> dict[str, list[float]]:
    """When each worker finished each batch, as the records show it (a batch's frames share their t_encoded)."""
    return {w: sorted({r.t_encoded for r in records if r.worker == w}) for w in {r.worker for r in records}}


def latency_in_batches(records: list[MetricsRecord]) -> tuple[np.ndarray, float]:
    """Each frame's capture-to-embedding latency in batches: divided by the time its worker took per
    batch for the last few batches up to its own (so that a machine that gets busier meanwhile makes
    batches slower, not the pipeline less real time); and the run's median batch time, in seconds.
    A worker's first batch, with no batch before it to measure, is left out."""
    ends = batch_ends(records)
    out = []
    for r in records:
        done = ends[r.worker]
        j = done.index(r.t_encoded)
        if j > 0:
            batch_s = float(np.median(np.diff(done[max(0, j - 3) : j + 1])))
            out.append((r.t_encoded - r.t_capture) / batch_s)
    intervals = np.concatenate([np.diff(done) for done in ends.values()])
    return np.array(out), float(np.median(intervals))


BATCHES = 30  # batches each worker finishes while the test watches: the run's length, in its own unit
# By the design (docs/PROTOCOL.md, Workers): a frame waits in the core for room at a worker (at most
# until one finishes a batch), then behind the batch being encoded, then for its own: about 3 batches
# (seen on a 2-core machine at a load average of 7 to 13, its batches taking 1 to 2.7 s: medians of
# 2.2 to 3.2 batches, p99 4.7). The bounds leave room for a busier machine's scheduling, and are
# still far below what a queue that grows reaches within the run (8 cameras at 25 fps on 2 workers
# that take a few frames a second: tens of batches).
P99_BATCHES = 8.0
GROWTH_BATCHES = 1.5  # the last third's median latency over the first's


@pytest.mark.timeout(600)
def test_eight_cameras_on_two_saturated_workers_stay_real_time_and_fair(pipeline, hosts, sockets, heavy_model):  # noqa: F811
    w0, w1, cams = hosts.add("w0"), hosts.add("w1"), hosts.add("cams")
    pipeline.tiny_model = heavy_model  # the workers' model: slower than eight cameras
    watch = Watch(sockets, pipeline)
    pipeline.start_core()
    pipeline.start_recorder()
    pipeline.start_worker("w0", host=w0)
    pipeline.start_worker("w1", host=w1)
    ingests = {
        f"cam{i}": pipeline.start_ingest(i, pipeline.start_camera(i, fps=25, host=cams, size=(640, 480)), host=cams)
        for i in range(8)
    }
    watch.until(lambda: len({r.stream for r in watch.records()}) == 8, 120, "every camera's records")
    start = time.monotonic()
    # As long as each worker takes for BATCHES batches: longer on a slower machine, as it should be.
    watch.until(
        lambda: all(len(batch_ends(watch.records(start)).get(w, ())) > BATCHES for w in ("w0", "w1")),
        400,
        f"each worker to finish {BATCHES} batches",
    )
    records = sorted(watch.records(start), key=lambda r: r.t_capture)
    said = stop_and_check(pipeline, ingests)
    # Saturated: the workers could not take every frame, so the core dropped the older ones.
    assert sum(c["dropped"] for c in said.values()) > 0, said
    # Real time, in the run's own unit: the workers' batch time, measured from the same records.
    # Capture-to-embedding latency stays within a few batches, and does not grow: the last third of
    # the run waits no longer than the first, give or take a batch or so, however long the overload lasts.
    latency, batch_s = latency_in_batches(records)  # in capture order
    thirds = [round(float(np.median(t)), 2) for t in np.array_split(latency, 3)]
    p99 = float(np.percentile(latency, 99))
    seen = f"a batch takes {batch_s:.2f} s; latency in batches: p99 {p99:.1f}, median by thirds of the run {thirds}"
    assert p99 <= P99_BATCHES, seen
    assert thirds[2] <= thirds[0] + GROWTH_BATCHES, seen
    # Fair: every camera gets its share of the workers (round robin), none starved.
    share = np.array([sum(r.stream == s for r in records) for s in ingests])
    assert (abs(share - share.mean()) <= 0.2 * share.mean()).all(), f"unfair shares: {share.tolist()}"
    print(seen, f"shares {share.tolist()}")


@pytest.mark.timeout(240)
def test_cameras_and_workers_join_and_leave_a_running_pipeline(pipeline, hosts, sockets):  # noqa: F811
    w0, w1, cam0, cam1 = hosts.add("w0"), hosts.add("w1"), hosts.add("cam0"), hosts.add("cam1")
    watch = Watch(sockets, pipeline)
    core = pipeline.start_core()
    recorder = pipeline.start_recorder()
    first = pipeline.start_worker("w0", host=w0)
    ingests = {"cam0": pipeline.start_ingest(0, pipeline.start_camera(0, fps=15, host=cam0), host=cam0)}
    watch.until(lambda: len(watch.records()) >= 15, 60, "records of the first camera")
    # A second camera and a second worker, given only the core's address; nobody else restarted.
    ingests["cam1"] = pipeline.start_ingest(1, pipeline.start_camera(1, fps=15, host=cam1), host=cam1)
    second = pipeline.start_worker("w1", host=w1)
    joined = time.monotonic()
    watch.until(
        lambda: (
            {"cam1"} <= {r.stream for r in watch.records(joined)}
            and {"w1"} <= {r.worker for r in watch.records(joined)}
        ),
        60,
        "the new camera's records, and the new worker's",
    )
    first.proc.terminate()  # the first worker leaves (Bye): the second carries on alone
    assert first.wait(30) == 0
    left = time.monotonic()
    watch.until(lambda: len(watch.records(left + 1)) >= 20, 60, "records after a worker left")
    assert {r.worker for r in watch.records(left + 1)} == {"w1"}  # what w0 had sent arrives within a second
    for svc in (core, recorder, second, *ingests.values()):
        assert svc.proc.poll() is None, f"{svc.args[0]} exited: " + svc.output()[-2000:]
    stop_and_check(pipeline, ingests)
