"""The all-in-one command's wiring, without starting anything: what each service is told, and what is left alone."""

from __future__ import annotations

import copy
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from types import MappingProxyType

from encoders.launcher import main as launcher
from encoders.launcher.children import Children, child_environment
from encoders.launcher.config import AllInOneConfig
from encoders.launcher.wiring import Endpoints, core_state_dir, services
from encoders.services.ingest.config import IngestConfig
from encoders.services.pisim.config import PisimConfig


def wire(cfg: AllInOneConfig, environ, folder: Path, **kw):
    return services(
        cfg,
        Endpoints.for_run(folder, cfg),
        environ,
        database_url="postgresql://db/x",
        recorder_ready=folder / "recorder.json",
        state_dir=core_state_dir(cfg, folder),
        **kw,
    )


def test_every_service_is_given_the_cores_one_address_in_a_folder_only_this_user_enters(tmp_path):
    with tempfile.TemporaryDirectory(prefix="encoders-run-") as name:
        folder = Path(name)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # what the launcher makes its folder with
        cfg = AllInOneConfig(stream=("http://a/s.mjpg", "http://b/s.mjpg"), workers=2)
        s = wire(cfg, {}, folder)
    core = f"ipc://{folder}/core"
    assert s.core.core_bind == core  # no port chosen, then bound later
    assert s.core.frames_bind.startswith(f"ipc://{folder}/") and s.core.metrics_bind.startswith(f"ipc://{folder}/")
    # Records the recorder has not acknowledged outlive the command (issue #22): in the runs folder.
    assert s.core.state_dir == str(Path(cfg.runs_dir) / ".core") and s.core.recorder
    assert s.recorder is not None and s.viewer is not None
    assert {i.core for i in s.ingests} == {s.encoder.core} == {s.recorder.core} == {s.viewer.core} == {core}
    assert s.viewer.frames == s.viewer.metrics == ""  # the viewer asks the core
    assert [i.stream_id for i in s.ingests] == ["cam0", "cam1"] and s.recorder.stream_dirs
    assert s.recorder.run_dir == "" and s.recorder.ready_file == str(folder / "recorder.json")


def test_with_a_public_bind_host_the_core_also_listens_on_its_well_known_ports(tmp_path):
    cfg = AllInOneConfig(stream=("http://a/s.mjpg",), bind_host="0.0.0.0")
    s = wire(cfg, {}, tmp_path)
    assert s.core.core_bind == f"ipc://{tmp_path}/core,tcp://*:5556"
    assert s.core.frames_bind == f"ipc://{tmp_path}/frames,tcp://*:5555"
    assert s.core.metrics_bind == f"ipc://{tmp_path}/metrics,tcp://*:5558"
    assert s.ingests[0].core == f"ipc://{tmp_path}/core"  # the local services stay on ipc


def test_the_environment_and_the_settings_given_are_read_never_written(tmp_path):
    environ = MappingProxyType({"ENCODERS_BATCH_SIZE": "4", "ENCODERS_PRETRAINED": "openai", "PATH": "/bin"})
    cfg = AllInOneConfig(stream=("http://a/s.mjpg",), workers=3, save=False)
    before = copy.deepcopy(cfg)
    s = wire(cfg, environ, tmp_path, model={"pretrained": "none"})
    assert cfg == before
    assert s.encoder.batch_size == 4  # the user's variable
    assert s.viewer is not None and s.encoder.pretrained == s.viewer.pretrained == "none"  # for this run only
    assert s.recorder is None and not s.core.recorder
    assert s.core.state_dir.startswith(str(tmp_path))  # nothing to keep without a recorder
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
    cfg = AllInOneConfig(display=False)
    assert launcher.demo(cfg, PisimConfig(port=0)) == 0
    assert seen["model"] == {"pretrained": "none"}
    assert seen["cfg"].stream[0].endswith("/stream.mjpg") and cfg.stream == ()  # a new object; the given one as it was
    assert "ENCODERS_PRETRAINED" not in os.environ


class Scripted(Children):
    """Children whose processes are small Python programs the test names, for the supervision rules."""

    def __init__(self, program: str) -> None:
        super().__init__({}, set())
        self.program = program
        self.starts = 0

    def _start(self, command, settings):
        self.starts += 1
        return subprocess.Popen([sys.executable, "-c", self.program])


def settle(children: Children) -> None:
    for child in children.all:
        child.proc.wait(10)


def test_a_child_that_dies_unasked_is_started_again_with_a_growing_backoff():
    children = Scripted("raise SystemExit(1)")
    child = children.spawn("encoder0", "encode", IngestConfig())
    settle(children)
    assert children.supervise(0.0, ended_on_purpose=lambda c: False) is None
    assert child.restart_at is not None and 0.75 <= child.restart_at <= 1.0  # first backoff: 1 s, less jitter
    assert children.starts == 1
    assert children.supervise(0.5, ended_on_purpose=lambda c: False) is None and children.starts == 1
    children.supervise(1.0, ended_on_purpose=lambda c: False)
    assert children.starts == 2 and child.restarts == 1
    settle(children)
    children.supervise(1.1, ended_on_purpose=lambda c: False)
    assert 1.1 + 1.5 <= child.restart_at <= 1.1 + 2.0  # failed again at once: 2 s, less jitter
    assert children.restarts() == {"encoder0": 1}


def test_a_child_that_keeps_failing_stops_the_run():
    children = Scripted("raise SystemExit(3)")
    children.spawn("recorder", "record", IngestConfig())
    now, problem = 0.0, None
    for _ in range(10):
        settle(children)
        problem = children.supervise(now, ended_on_purpose=lambda c: False)
        if problem:
            break
        now += 40.0  # past every backoff
        children.supervise(now, ended_on_purpose=lambda c: False)
        now += 0.1
    assert problem == "recorder keeps failing (exit code 3, 5 times in a row)"


def test_a_child_at_its_natural_end_is_left_alone():
    children = Scripted("raise SystemExit(0)")
    child = children.spawn("ingest0", "ingest", IngestConfig())
    settle(children)
    assert children.supervise(0.0, ended_on_purpose=lambda c: c.name.startswith("ingest")) is None
    assert child.done and child.restart_at is None and children.starts == 1


def test_each_local_camera_and_worker_gets_a_prometheus_port_of_its_own(tmp_path):
    cfg = AllInOneConfig(stream=("http://a/s.mjpg", "http://b/s.mjpg"), workers=2)
    s = wire(cfg, {}, tmp_path)
    assert [i.prometheus_port for i in s.ingests] == ["9560", "9561"]
    assert [s.encoder.prometheus_port_setting("encoder", i) for i in range(2)] == ["9580", "9581"]
    assert (
        s.core.prometheus_port_for("metrics") == 9556
        and s.recorder
        and s.recorder.prometheus_port_for("recorder") == 9557
    )
    off = wire(cfg, {"ENCODERS_PROMETHEUS_PORT": "none"}, tmp_path)
    assert [i.prometheus_port for i in off.ingests] == ["none", "none"] and off.core.prometheus_port_for(
        "metrics"
    ) is None
    anywhere = wire(cfg, {"ENCODERS_PROMETHEUS_PORT": "0"}, tmp_path)
    assert [i.prometheus_port for i in anywhere.ingests] == ["0", "0"]  # any free port, each
