"""The all-in-one command's wiring, without starting anything: what each service is told, and what is left alone."""

from __future__ import annotations

import copy
import os
import stat
import tempfile
from pathlib import Path
from types import MappingProxyType

from encoders.launcher import main as launcher
from encoders.launcher.children import child_environment
from encoders.launcher.config import RunConfig
from encoders.launcher.wiring import Endpoints, services
from encoders.services.ingest.config import IngestConfig
from encoders.services.pisim.config import PisimConfig


def wire(cfg: RunConfig, environ, folder: Path, **kw):
    return services(
        cfg,
        Endpoints.for_run(folder, cfg),
        environ,
        database_url="postgresql://db/x",
        recorder_ready=folder / "recorder.json",
        **kw,
    )


def test_local_services_meet_on_ipc_endpoints_in_a_folder_only_this_user_enters(tmp_path):
    with tempfile.TemporaryDirectory(prefix="encoders-run-") as name:
        folder = Path(name)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # what the launcher makes its folder with
        cfg = RunConfig(stream=("http://a/s.mjpg", "http://b/s.mjpg"), workers=2)
        s = wire(cfg, {}, folder)
    endpoints = [
        s.metrics.metrics_in_bind,
        s.metrics.metrics_bind,
        s.metrics.records_bind,
        s.encoder.work,
        s.encoder.metrics_in,
        s.recorder.records,
        s.recorder.frames,
        s.viewer.frames,
        s.viewer.metrics,
    ]
    endpoints += [i.frames_bind for i in s.ingests] + [i.work_bind for i in s.ingests]
    for value in endpoints:
        for endpoint in value.split(","):
            assert endpoint.startswith(f"ipc://{folder}/"), endpoint  # no port chosen, then bound later
    # Every side agrees on every address.
    assert s.encoder.work.split(",") == [i.work_bind for i in s.ingests]
    assert s.recorder.frames.split(",") == [i.frames_bind for i in s.ingests] == s.viewer.frames.split(",")
    assert {i.metrics_in for i in s.ingests} == {s.encoder.metrics_in} == {s.metrics.metrics_in_bind}
    assert s.recorder.records == s.metrics.records_bind and s.viewer.metrics == s.metrics.metrics_bind
    assert [i.stream_id for i in s.ingests] == ["cam0", "cam1"] and s.recorder.stream_dirs
    assert s.recorder.run_dir == "" and s.recorder.ready_file == str(folder / "recorder.json")


def test_with_a_public_bind_host_the_publishers_also_listen_on_tcp(tmp_path):
    cfg = RunConfig(stream=("http://a/s.mjpg",), bind_host="0.0.0.0")
    s = wire(cfg, {}, tmp_path)
    assert s.ingests[0].frames_bind == f"ipc://{tmp_path}/cam0-frames,tcp://*:*"
    assert s.metrics.metrics_bind == f"ipc://{tmp_path}/metrics,tcp://*:*"
    assert s.ingests[0].work_bind == f"ipc://{tmp_path}/cam0-work"  # workers are local to the all-in-one
    assert s.viewer.frames == f"ipc://{tmp_path}/cam0-frames"  # the local viewer stays on ipc


def test_the_environment_and_the_settings_given_are_read_never_written(tmp_path):
    environ = MappingProxyType({"ENCODERS_BATCH_SIZE": "4", "ENCODERS_PRETRAINED": "openai", "PATH": "/bin"})
    cfg = RunConfig(stream=("http://a/s.mjpg",), workers=3, save=False)
    before = copy.deepcopy(cfg)
    s = wire(cfg, environ, tmp_path, model={"pretrained": "none"})
    assert cfg == before
    assert s.encoder.batch_size == 4  # the user's variable
    assert s.encoder.pretrained == s.viewer.pretrained == "none"  # the override, for this run only
    assert s.recorder is None and s.metrics.records_bind == "none"
    assert s.encoder.threads >= 1


def test_a_child_gets_its_settings_and_not_the_variables_nobody_reads():
    environ = {"PATH": "/bin", "ENCODERS_LOG_LEVEL": "DEBUG", "ENCODERS_STRAEM": "typo", "ENCODERS_STREAM": "x"}
    known = {"ENCODERS_LOG_LEVEL", "ENCODERS_STREAM", "ENCODERS_STREAM_ID"}
    env = child_environment(environ, known, IngestConfig(stream="http://pi/s.mjpg", stream_id="cam3"))
    assert env["PATH"] == "/bin" and env["ENCODERS_LOG_LEVEL"] == "DEBUG"
    assert "ENCODERS_STRAEM" not in env  # warned about once, by the launcher
    assert env["ENCODERS_STREAM"] == "http://pi/s.mjpg" and env["ENCODERS_STREAM_ID"] == "cam3"


def test_the_demo_gives_random_weights_as_a_setting_not_through_the_environment(monkeypatch):
    monkeypatch.delenv("ENCODERS_PRETRAINED", raising=False)
    seen = {}

    def run(cfg, *, model=None):
        seen["cfg"], seen["model"] = cfg, model
        return 0

    monkeypatch.setattr(launcher, "run", run)
    monkeypatch.setattr(launcher, "setup_logging", lambda service: None)  # the test run's logging stays as it is
    cfg = RunConfig(display=False)
    assert launcher.demo(cfg, PisimConfig(port=0)) == 0
    assert seen["model"] == {"pretrained": "none"}
    assert seen["cfg"].stream[0].endswith("/stream.mjpg") and cfg.stream == ()  # a new object; the given one as it was
    assert "ENCODERS_PRETRAINED" not in os.environ
