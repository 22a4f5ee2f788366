"""The pipeline on several hosts (network namespaces on one bridge: tests/hosts.py), each service
given only the core's address, as the README's "Running on several machines" section has it (issue #11).

Every test asserts that the counts add up (published = embedded + dropped + skipped + lost)
and that every embedded frame is a row, once.
"""

from __future__ import annotations

import itertools
import json
import re
import time

import numpy as np
import pytest

from encoders.shared import keys, zmqio
from encoders.shared.messages import Message, MetricsRecord

from ..conftest import Service, Sockets
from ..hosts import Hosts, hosts  # noqa: F401 - the fixture
from .pipeline import Pipeline, subscribe

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
                msg, _ = zmqio.receive(self.sub, topic=True)
                if msg is not None:
                    self.seen.append((time.monotonic(), msg))

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


def stop_and_check(pipeline: Pipeline, ingests: dict[str, Service]) -> dict:
    """`encoders stop` from this host; every service exits 0; each stream's counts add up to the
    frames its ingest read; every embedded frame is one row."""
    done = pipeline.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    for svc in pipeline.service.started:
        if svc.args[0] != "pisim":
            assert svc.wait(60) == 0, f"{svc.args[0]}: " + svc.output()[-3000:]
    totals = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in done.stdout.splitlines()[1:]}
    rows = pipeline.rows()
    assert len({(r[0], r[1]) for r in rows}) == len(rows), "a frame stored twice"
    for stream, ingest in ingests.items():
        published, embedded, dropped, skipped, lost = totals[stream]
        assert published == embedded + dropped + skipped + lost, totals[stream]
        assert published == frames_read(ingest), (stream, totals[stream])
        assert embedded == sum(r[0] == stream for r in rows), "an embedded frame is not a row"
    return totals


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


@pytest.mark.timeout(240)
def test_the_core_host_cut_for_20_s_recovers_and_loses_nothing_embedded(pipeline, hosts, sockets):  # noqa: F811
    w0, cam = hosts.add("w0"), hosts.add("cam0")
    watch = Watch(sockets, pipeline)
    pipeline.start_core()
    pipeline.start_recorder()
    pipeline.start_worker("w0", host=w0)
    ingest = pipeline.start_ingest(0, pipeline.start_camera(0, fps=15, host=cam), host=cam)
    watch.until(lambda: len(watch.records()) >= 20, 60, "records")
    assert pipeline.core_host is not None
    hosts.cut(pipeline.core_host)
    time.sleep(20)
    hosts.mend(pipeline.core_host)
    mended = time.monotonic()
    watch.until(lambda: len(watch.records(mended)) >= 20, 60, "records again once the core is back")
    totals = stop_and_check(pipeline, {"cam0": ingest})
    # What the camera sent while the core was away is counted (dropped), never silently missing.
    assert totals["cam0"][2] > 0


@pytest.mark.timeout(300)
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
    watch.until(lambda: len({r.stream for r in watch.records()}) == 8, 60, "every camera's records")
    start = time.monotonic()
    watch.for_s(60)
    records = watch.records(start)
    totals = stop_and_check(pipeline, ingests)
    # Saturated: the workers could not take every frame, so the core dropped the older ones.
    assert sum(t[2] for t in totals.values()) > 0, totals
    # Real time: latency bounded (a few batches of the heavy model on a busy 2-core machine), and
    # not growing: no queue builds up however long the overload lasts.
    latency = np.array([r.t_encoded - r.t_capture for r in sorted(records, key=lambda r: r.t_capture)])
    assert np.percentile(latency, 99) < 3.0, f"p99 capture-to-embedding {np.percentile(latency, 99):.2f} s"
    thirds = np.array_split(latency, 3)
    assert np.median(thirds[2]) < np.median(thirds[0]) + 0.5, [round(float(np.median(t)), 2) for t in thirds]
    share = np.array([sum(r.stream == s for r in records) for s in ingests])
    assert (abs(share - share.mean()) <= 0.2 * share.mean()).all(), f"unfair shares: {share.tolist()}"


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
