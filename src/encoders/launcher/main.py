"""The all-in-one command: every service as a separate local process, wired over ZeroMQ.

Start order: metrics, recorder, encoder workers (waiting until their model is loaded),
one ingest per camera, viewer. Stop order is what makes a run lose nothing: ingest stops
first and announces the end of its stream, workers finish what they hold, metrics
releases the last records and exits, the recorder flushes the database and writes
summary.json and exits; only then are workers and the viewer stopped.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from encoders.launcher.config import RunConfig
from encoders.services.encoder.config import EncoderConfig
from encoders.services.ingest.config import IngestConfig
from encoders.services.metrics.config import MetricsConfig
from encoders.services.pisim.config import PisimConfig
from encoders.services.recorder.config import RecorderConfig
from encoders.services.viewer.config import ViewerConfig
from encoders.shared.runtime import log_settings, setup_logging, stop_on_signals

log = logging.getLogger("encoders.run")

MODEL_LOAD_TIMEOUT_S = 300.0
INGEST_STOP_S = 10.0
METRICS_STOP_S = 30.0
RECORDER_STOP_S = 60.0
OTHERS_STOP_S = 40.0


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def has_display() -> bool:
    return sys.platform != "linux" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM if the launcher dies, so no process is ever left behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None


class Pipeline:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.children: list[Child] = []
        host = cfg.bind_host
        self.connect_host = "127.0.0.1" if host in ("0.0.0.0", "*") else host
        self.bind_host = "*" if host == "0.0.0.0" else host
        self.ports = {name: free_port(self.connect_host) for name in ("metrics_in", "metrics", "records")}
        self.stream_ports = [(free_port(self.connect_host), free_port(self.connect_host)) for _ in cfg.stream]

    def bind(self, port: int) -> str:
        return f"tcp://{self.bind_host}:{port}"

    def connect(self, port: int) -> str:
        return f"tcp://{self.connect_host}:{port}"

    def spawn(self, name: str, command: str, settings, extra_env: dict | None = None) -> Child:
        env = {**os.environ, **settings.to_env(), **(extra_env or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", "encoders", command],
            env=env,
            start_new_session=True,  # Ctrl+C reaches the launcher alone, which orders the stop
            # prctl only, no Python code that could need a lock another thread holds.
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        child = Child(name, proc)
        self.children.append(child)
        return child

    def of(self, prefix: str) -> list[Child]:
        return [c for c in self.children if c.name.startswith(prefix)]


def configs(cfg: RunConfig, p: Pipeline, run_dir: Path | None, database_url: str):
    """Every service's settings for this run: the environment's ENCODERS_* values, then our wiring."""
    n = len(cfg.stream)
    ingests = [
        IngestConfig.from_env(
            stream=url,
            stream_id=f"cam{i}",
            frames_bind=p.bind(fp),
            work_bind=p.bind(wp),
            metrics_in=p.connect(p.ports["metrics_in"]),
            lossless=cfg.lossless,
            max_frames=cfg.max_frames,
            reconnect=True,
        )
        for i, (url, (fp, wp)) in enumerate(zip(cfg.stream, p.stream_ports, strict=False))
    ]
    frames = ",".join(p.connect(fp) for fp, _ in p.stream_ports)
    work = ",".join(p.connect(wp) for _, wp in p.stream_ports)
    threads = int(os.environ.get("ENCODERS_THREADS") or max(1, (os.cpu_count() or 1) // cfg.workers))
    encoder = EncoderConfig.from_env(work=work, metrics_in=p.connect(p.ports["metrics_in"]), threads=threads)
    metrics = MetricsConfig.from_env(
        metrics_in_bind=p.bind(p.ports["metrics_in"]),
        metrics_bind=p.bind(p.ports["metrics"]),
        records_bind=p.bind(p.ports["records"]) if cfg.save else "none",
        exit_after_streams=n,
    )
    recorder = None
    if cfg.save:
        recorder = RecorderConfig.from_env(
            records=p.connect(p.ports["records"]),
            frames=frames,
            database_url=database_url,
            runs_dir=cfg.runs_dir,
            run_dir=str(run_dir),
            stream_dirs=n > 1,
            exit_after_streams=n,
        )
    viewer = ViewerConfig.from_env(
        frames=frames,
        metrics=p.connect(p.ports["metrics"]),
        plot=cfg.plot,
        web=cfg.web,
        with_window=cfg.display,
        database_url=database_url or "",
        runs_dir=cfg.runs_dir,
    )
    return ingests, encoder, metrics, recorder, viewer


def check_streams(cfg: RunConfig) -> int:
    from encoders.services.ingest import main as ingest

    failed = 0
    for url in cfg.stream:
        failed += ingest.check(IngestConfig.from_env(stream=url)) != 0
    return 1 if failed else 0


def run(cfg: RunConfig) -> int:
    setup_logging("run")
    if cfg.test:
        return check_streams(cfg)
    log_settings(log, "pipeline", cfg)
    stop = stop_on_signals()
    if cfg.display and not has_display():
        log.warning("no display found (DISPLAY is not set): running headless, as with --no-display")
        cfg.display = False
    if cfg.web:
        ViewerConfig.from_env(web=cfg.web)  # a bad --web (or a public one without a token) fails before anything starts

    run_dir = None
    database_url = cfg.database_url
    db_handle = None
    if cfg.save:
        run_dir = Path(cfg.runs_dir) / datetime.now().strftime("%Y%m%d_%H%M%S")
        while run_dir.exists():
            time.sleep(1.0)  # one run folder per second, named as the seed names them
            run_dir = Path(cfg.runs_dir) / datetime.now().strftime("%Y%m%d_%H%M%S")
        if not database_url:
            from encoders.services.recorder.embedded_db import database_url as embedded

            database_url, db_handle = embedded("", cfg.runs_dir)

    p = Pipeline(cfg)
    ingests, encoder, metrics, recorder, viewer = configs(cfg, p, run_dir, database_url)
    if recorder is not None:
        recorder.pipeline_config = json.dumps(
            {
                "run": cfg.describe(),
                "ingest": [i.describe() for i in ingests],
                "encoder": encoder.describe(),
                "metrics": metrics.describe(),
                "viewer": viewer.describe() if cfg.display or cfg.web else None,
            },
            default=str,
        )
    code = 0
    try:
        p.spawn("metrics", "metrics", metrics)
        if recorder is not None:
            p.spawn("recorder", "record", recorder)
        with tempfile.TemporaryDirectory(prefix="encoders-ready-") as ready_dir:
            ready = [Path(ready_dir) / f"worker{i}" for i in range(cfg.workers)]
            for i in range(cfg.workers):
                p.spawn(
                    f"encoder{i}",
                    "encode",
                    encoder,
                    {"ENCODERS_READY_FILE": str(ready[i]), "ENCODERS_WORKER_ID": f"worker{i}"},
                )
            code = wait_until(lambda: all(f.exists() for f in ready), p, stop, MODEL_LOAD_TIMEOUT_S, "model loading")
        if code == 0 and not stop.is_set():
            for i, ing in enumerate(ingests):
                p.spawn(f"ingest{i}", "ingest", ing)
            if cfg.display or cfg.web:
                p.spawn("viewer", "view", viewer)
            log.info(
                "pipeline running: %d stream(s), %d worker(s)%s. Ctrl+C stops it.",
                len(ingests),
                cfg.workers,
                f", run folder {run_dir}" if run_dir else "",
            )
            code = supervise(cfg, p, stop)
    finally:
        code = shutdown(p) or code
        if db_handle is not None:
            db_handle.cleanup()
    report(run_dir)
    return code


def wait_until(done, p: Pipeline, stop, timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    while not done():
        dead = [c for c in p.children if not c.alive()]
        if dead:
            log.error("%s exited (code %s) during %s", dead[0].name, dead[0].proc.returncode, what)
            return 1
        if stop.is_set():
            return 0
        if time.monotonic() > deadline:
            log.error("%s took longer than %.0f s", what, timeout)
            return 1
        time.sleep(0.1)
    return 0


def supervise(cfg: RunConfig, p: Pipeline, stop) -> int:
    """Run until asked to stop, the duration is over, the viewer closes or the streams end."""
    started = time.monotonic()
    while not stop.is_set():
        if cfg.duration and time.monotonic() - started >= cfg.duration:
            log.info("duration of %.0f s reached", cfg.duration)
            return 0
        if all(not c.alive() and c.proc.returncode == 0 for c in p.of("ingest")):
            log.info("every stream has ended")  # metrics and the recorder finish by themselves
            return 0
        for child in p.children:
            if child.alive() or (child.name.startswith("ingest") and child.proc.returncode == 0):
                continue
            if child.name == "viewer" and child.proc.returncode == 0:
                log.info("viewer closed: stopping the run")
                return 0
            log.error("%s exited unexpectedly (code %s): stopping the run", child.name, child.proc.returncode)
            return 1
        time.sleep(0.2)
    return 0


def shutdown(p: Pipeline) -> int:
    """Stop in dataflow order so that every frame already read is embedded, stored and counted."""
    failures = 0
    for c in p.of("ingest"):
        c.stop()
    failures += _wait_all(p.of("ingest"), INGEST_STOP_S)
    # metrics and the recorder exit by themselves once every stream's end has come through.
    failures += _wait_all(p.of("metrics"), METRICS_STOP_S)
    failures += _wait_all(p.of("recorder"), RECORDER_STOP_S)
    for c in p.of("encoder") + p.of("viewer"):
        c.stop()
    failures += _wait_all(p.of("encoder") + p.of("viewer"), OTHERS_STOP_S)
    return 1 if failures else 0


def _wait_all(children: list[Child], timeout: float) -> int:
    """Wait for each child; one that does not exit in time gets SIGTERM, then SIGKILL."""
    deadline = time.monotonic() + timeout
    failures = 0
    for c in children:
        if c.wait(deadline - time.monotonic()) is None:
            log.warning("%s still running after %.0f s: terminating it", c.name, timeout)
            c.stop()
            if c.wait(15) is None:
                log.error("%s did not stop: killing it", c.name)
                c.proc.kill()
                c.proc.wait()
        code = c.proc.returncode
        if code not in (0, -signal.SIGTERM):
            log.error("%s exited with code %s", c.name, code)
            failures += 1
    return failures


def report(run_dir: Path | None) -> None:
    if run_dir is None:
        return
    summaries = sorted(run_dir.glob("summary.json")) + sorted(run_dir.glob("*/summary.json"))
    for path in summaries:
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "streams" in summary and path.parent == run_dir and len(summaries) > 1:
            continue
        log.info("%s: frames %s", path, json.dumps(summary.get("frames") or summary.get("totals", {}).get("frames")))
    log.info("run folder: %s", run_dir)


def demo(cfg: RunConfig, sim: PisimConfig) -> int:
    """pisim in this process, then the pipeline against it."""
    setup_logging("demo")
    from encoders.services.pisim.server import serve_in_thread

    if not os.environ.get("ENCODERS_PRETRAINED"):
        log.warning(
            "demo: ENCODERS_PRETRAINED is not set, so the model gets random weights (no download). "
            "Set ENCODERS_PRETRAINED=openai (needs internet once) or a checkpoint path for real embeddings."
        )
        os.environ["ENCODERS_PRETRAINED"] = "none"
    server, url = serve_in_thread(sim)
    try:
        cfg.stream = (f"{url}/stream.mjpg",)
        return run(cfg)
    finally:
        server.shutdown()
        server.close()
