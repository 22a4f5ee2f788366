"""ENCODERS_RUNTIME=none (services/encoder/embedder.py): a worker that runs no model, for measuring
and testing the plumbing. `encoders encode --runtime none` in a process where torch and open_clip
cannot be imported, against a stand-in core; and workers without a model in a real pipeline
(core, recorder, camera, lossless ingest), every frame's vector the one its JPEG gives."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from PIL import Image

from encoders.services.encoder.embedder import NoModel, unit_vector
from encoders.services.encoder.preprocess import picture_levels
from encoders.shared import zmqio
from encoders.shared.messages import Bye, Embedding, Frame, Hello, MetricsRecord, Skipped, Stop

from ..conftest import REPO
from ..fake_core import FakeCore
from .pipeline import Pipeline, collect, subscribe, totals

BLOCKED = ("torch", "open_clip", "torchvision")
# `encoders ...` with every import of torch or open_clip failing, and saying so on stderr: a
# guarded import (try/except ImportError) would hide a plain `sys.modules[name] = None`.
RUN_WITHOUT_TORCH = f"""
import importlib.abc, runpy, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            print(f"BLOCKED import of {{name}}", file=sys.stderr, flush=True)
            raise ImportError(f"{{name}} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = ["encoders", *sys.argv[1:]]
runpy.run_module("encoders", run_name="__main__")
"""


def jpeg(color, size=(640, 480)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("decode", [True, False], ids=["decoding", "ENCODERS_NONE_DECODE=0"])
def test_a_worker_without_a_model_never_imports_torch_and_does_a_workers_work(sockets, tmp_path, decode):
    core = FakeCore(sockets.bind(zmq.ROUTER), roles={"worker"})
    log_path = tmp_path / "encode.log"
    try:
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-c", RUN_WITHOUT_TORCH, "encode", "--runtime", "none", "--core", core.endpoint],
                env={
                    **os.environ,
                    "ENCODERS_WORKER_ID": "plumber",
                    "ENCODERS_BATCH_SIZE": "4",
                    "ENCODERS_NONE_DECODE": str(int(decode)),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        try:
            core.wait(Hello, timeout=60)
            (first,) = core.received(Hello)[:1]
            hello = first.msg
            assert isinstance(hello, Hello)
            assert (hello.role, hello.name, hello.capacity) == ("worker", "plumber", 8)
            assert (hello.model, hello.dim) == ("none/512", 512)
            good, other = jpeg("teal"), jpeg((250, 250, 250), (1920, 1080))
            frames = [
                Frame("cam0", 0, 1.0, 640, 480, good),
                Frame("cam0", 1, 2.0, 640, 480, good[:300] + b"\0" * 300),
                Frame("cam0", 2, 3.0, 1920, 1080, other),
            ]
            for f in frames:
                core.send(f, to=first.identity)
            deadline = time.monotonic() + 30
            while len(core.messages(Embedding)) + len(core.messages(Skipped)) < 3:
                assert time.monotonic() < deadline, core.received()
                time.sleep(0.02)
            got = {m.seq: m for m in core.messages(Embedding) + core.messages(Skipped)}
            assert isinstance(got[1], Skipped) and "corrupt JPEG" in got[1].reason
            pre = NoModel().pre
            for seq, data, thumb in ((0, good, (160, 120)), (2, other, (160, 90))):
                e = got[seq]
                assert isinstance(e, Embedding) and (e.model, e.worker) == ("none/512", "plumber")
                assert np.array_equal(e.vector, unit_vector(data))
                if decode:
                    assert (e.brightness, e.contrast) == pytest.approx(picture_levels(pre.load(data)))
                    assert Image.open(io.BytesIO(e.thumbnail)).size == thumb
                else:  # no picture work at all: no levels, no thumbnail
                    assert (e.brightness, e.contrast, e.thumbnail) == (None, None, b"")
            core.send(Stop("done"), to=first.identity)
            assert worker.wait(30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        core.wait(Bye)
    finally:
        core.close()
    output = log_path.read_text()
    assert "BLOCKED" not in output, output[-3000:]
    assert "ENCODERS_RUNTIME=none: no model" in output


FRAMES = 40


@pytest.mark.timeout(180)
def test_workers_without_a_model_in_a_real_pipeline_every_frame_recorded_with_its_jpegs_vector(
    service, tmp_path, database, sockets
):
    # Every frame previewed (the frames publisher is fed by the ingest's previews, at most this many a second).
    pipeline = Pipeline(service, {"ENCODERS_RUNTIME": "none"}, tmp_path, database, env={"ENCODERS_PREVIEW_FPS": "1000"})
    pipeline.start_core()
    pipeline.start_recorder()
    for name in ("w0", "w1"):
        pipeline.start_worker(name)
    records_sub = subscribe(sockets, pipeline.metrics_pub)
    frames_sub = sockets.connect(zmq.SUB, f"tcp://127.0.0.1:{pipeline.frames_port}", subscribe=[b"frame/"])
    url = pipeline.start_camera(0, fps=0)  # as fast as the ingest takes them
    pipeline.start_ingest(0, url, "--lossless", "--max-frames", str(FRAMES))
    got = collect(records_sub, until_eos=1)
    records = [m for m in got if isinstance(m, MetricsRecord)]
    jpegs: dict[int, bytes] = {}
    while len(jpegs) < FRAMES and frames_sub.poll(5000):
        msg, _ = zmqio.receive(frames_sub, topic=True)
        if isinstance(msg, Frame):
            jpegs[msg.seq] = msg.jpeg
    done = pipeline.stop()
    counts = totals(done)["cam0"]
    assert counts["published"] == counts["embedded"] == FRAMES  # lossless: every frame goes through
    assert counts["dropped"] == counts["skipped"] == counts["lost"] == 0
    assert [r.seq for r in records] == list(range(FRAMES))
    assert {r.worker for r in records} <= {"w0", "w1"} and {r.model for r in records} == {"none/512"}
    assert len(jpegs) == FRAMES, "the frames publisher missed some"
    for r in records:
        assert np.array_equal(r.vector, unit_vector(jpegs[r.seq]))
        assert r.thumbnail and r.brightness is not None and r.contrast is not None
    for svc in pipeline.service.started:
        if svc.args[0] != "pisim":
            assert svc.wait(60) == 0, f"{svc.args[0]}: " + svc.output()[-3000:]
    rows = pipeline.rows()
    assert [row[1] for row in rows] == list(range(FRAMES))
    for svc in pipeline.service.started:
        if svc.args[0] == "encode":
            assert "ENCODERS_RUNTIME=none: no model" in svc.output()
