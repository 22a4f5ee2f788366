"""The all-in-one command: every service as a separate local process, connected to one core.

Start order: the core (metrics), the recorder (waiting until it has claimed its run), the
encoder workers (waiting until their model is loaded), one ingest per camera, the viewer.
Each connects to the core only; a child that dies unasked is started again (children.py).

The stop is the pipeline's own (docs/PROTOCOL.md, "Stopping"): the launcher asks the core
to stop, the core ends every camera's stream, waits until every frame has its outcome and
every record is acknowledged by the recorder, then stops the workers and the recorder and
exits; only the viewer is stopped by the launcher. Nothing embedded is left unrecorded.
Children are watched through the drain as before it (a hung or dead recorder is started
again, and takes the records). Should records still be left (a recorder that cannot store
them), the core keeps them in its state folder in the runs folder (wiring.core_state_dir),
and the next start stores them into their run before anything else
(services/recorder/left_records.py), as `encoders runs repair` does.

The launcher changes neither its environment nor the settings it is given: each child gets
its own settings as variables (wiring.py), and the demo's stand-in camera and random
weights are settings like any other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from encoders.control import request_stop
from encoders.services.pisim.config import PisimConfig
from encoders.services.viewer.config import ViewerConfig
from encoders.shared.disks import disk_problem
from encoders.shared.keys import check_binds
from encoders.shared.runtime import StartupError, log_settings, setup_logging, stop_on_signals
from encoders.shared.storage import embedded
from encoders.shared.storage.errors import DatabaseUnavailable
from encoders.variables import KNOWN_VARIABLES

from .children import Child, Children, Liveness
from .config import AllInOneConfig
from .leftovers import cannot_start, left_behind, take_up_state
from .wiring import Endpoints, Services, core_state_dir, services

log = logging.getLogger("encoders.run")

CORE_START_TIMEOUT_S = 30.0
RECORDER_START_TIMEOUT_S = 60.0
MODEL_LOAD_TIMEOUT_S = 300.0
POLL_S = 0.2  # how often the launcher looks at its children


def has_display(environ: Mapping[str, str]) -> bool:
    return sys.platform != "linux" or bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def run(cfg: AllInOneConfig, *, model: Mapping[str, Any] | None = None) -> int:
    """The whole pipeline until it is stopped; ``model`` overrides the environment's model settings."""
    setup_logging("run")
    if cfg.test:
        return check_streams(cfg)
    log_settings(log, "pipeline", cfg)
    stop = stop_on_signals()
    environ = dict(os.environ)  # read once; never written
    if cfg.display and not has_display(environ):
        log.warning("no display found (DISPLAY is not set): running headless, as with --no-display")
        cfg = dataclasses.replace(cfg, display=False)
    if cfg.web:
        ViewerConfig.from_env(environ, web=cfg.web)  # a bad --web (or a public one without a token) fails now

    with ExitStack() as resources:
        folder = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="encoders-run-")))
        database_url = ""
        if cfg.save:
            try:
                # The recorder, search and the web viewer share one embedded server for the run.
                database_url = resources.enter_context(embedded.database(cfg.database_url, cfg.runs_dir))
            except (embedded.NoDatabase, DatabaseUnavailable, OSError, subprocess.SubprocessError) as exc:
                log.error("cannot start: %s", cannot_start(exc, cfg.runs_dir))
                return 2
        state_dir = core_state_dir(cfg, folder)
        if cfg.save and (code := take_up_state(cfg, environ, database_url, state_dir)):
            return code
        ep = Endpoints.for_run(folder, cfg)
        wiring = services(
            cfg,
            ep,
            environ,
            database_url=database_url,
            recorder_ready=folder / "recorder.json",
            state_dir=state_dir,
            model=model,
        )
        try:  # --bind-host beyond loopback: keys, or the word that the network is trusted
            check_binds(
                [wiring.core.core_bind, wiring.core.frames_bind, wiring.core.metrics_bind],
                wiring.core.keys,
                wiring.core.insecure,
            )
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            return 2
        children = Children(environ, KNOWN_VARIABLES, hang_after=cfg.hang_after)
        code, run_dir = 0, None
        with Liveness(children):
            try:
                code, run_dir = start(cfg, wiring, ep, children, stop)
                if code == 0 and not stop.is_set():
                    log.info(
                        "pipeline running: %d stream(s), %d worker(s)%s. Ctrl+C stops it.",
                        len(wiring.ingests),
                        cfg.workers,
                        f", run folder {run_dir}" if run_dir else "",
                    )
                    code = supervise(cfg, children, stop)
            finally:
                code = finish(ep, children, cfg.drain_timeout) or code
        report(run_dir, children.restarts())
        return left_behind(cfg, state_dir) or code


def start(
    cfg: AllInOneConfig, wiring: Services, ep: Endpoints, children: Children, stop: threading.Event
) -> tuple[int, Path | None]:
    """Start every service in order; (0, the run folder) once the streams are being read."""
    children.spawn("metrics", "metrics", wiring.core)
    code = wait_until((ep.folder / "core").exists, children, stop, CORE_START_TIMEOUT_S, "the core's start")
    if code or stop.is_set():
        return code, None
    run_dir = None
    if wiring.recorder is not None:
        recorder = dataclasses.replace(wiring.recorder, pipeline_config=wiring.described(cfg))
        children.spawn("recorder", "record", recorder)
        ready = Path(recorder.ready_file)
        code = wait_until(ready.exists, children, stop, RECORDER_START_TIMEOUT_S, "the recorder's start")
        if code or stop.is_set():
            return code, None
        run_dir = Path(json.loads(ready.read_text())["dir"])
    workers = [ep.folder / f"worker{i}.ready" for i in range(cfg.workers)]
    for i, ready_file in enumerate(workers):
        settings = dataclasses.replace(
            wiring.encoder,
            ready_file=str(ready_file),
            worker_id=f"worker{i}",
            data_bind=f"ipc://{ep.folder / f'data{i}'}",  # the data link, private to the run like the rest
            prometheus_port=wiring.encoder.prometheus_port_setting("encoder", i),  # each its own
        )
        children.spawn(f"encoder{i}", "encode", settings)
    code = wait_until(lambda: all(f.exists() for f in workers), children, stop, MODEL_LOAD_TIMEOUT_S, "model loading")
    if code or stop.is_set():
        return code, run_dir
    for i, ingest in enumerate(wiring.ingests):
        children.spawn(f"ingest{i}", "ingest", ingest)
    if wiring.viewer is not None:
        children.spawn("viewer", "view", wiring.viewer)
    return 0, run_dir


def wait_until(done: Callable[[], bool], children: Children, stop: threading.Event, timeout: float, what: str) -> int:
    """0 once ``done()`` (or stopped); 1 if a child exits meanwhile or it takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        dead = [c for c in children.all if not c.alive()]
        if dead:
            log.error("%s exited (code %s) during %s", dead[0].name, dead[0].proc.returncode, what)
            return 1
        if stop.wait(0.1):
            return 0
        if time.monotonic() > deadline:
            log.error("%s took longer than %.0f s", what, timeout)
            return 1
    return 0


def ended_on_purpose(child: Child) -> bool:
    """An exit that is the child's natural end: its camera's stream ended, or the viewer was closed."""
    return child.proc.returncode == 0 and child.name.startswith(("ingest", "viewer"))


def supervise(cfg: AllInOneConfig, children: Children, stop: threading.Event) -> int:
    """Until asked to stop, the duration is over, the viewer closes or the streams end; restarting
    what dies unasked meanwhile. 1 if a child keeps failing."""
    started = time.monotonic()
    while not stop.wait(POLL_S):
        now = time.monotonic()
        if cfg.duration and now - started >= cfg.duration:
            log.info("duration of %.0f s reached", cfg.duration)
            return 0
        problem = children.supervise(now, ended_on_purpose=ended_on_purpose)
        if problem:
            log.error("%s: stopping the run", problem)
            return 1
        if any(c.done for c in children.of("viewer")):
            log.info("viewer closed: stopping the run")
            return 0
        if all(c.done for c in children.of("ingest")):
            log.info("every stream has ended")
            return 0
    return 0


def finish(ep: Endpoints, children: Children, drain_timeout: float) -> int:
    """The pipeline drains itself at the core's word, its children watched meanwhile (one that dies
    or hangs is started again); whatever is left is stopped. 1 if anything failed."""
    core = children.of("metrics")
    if core and core[0].alive():
        asked: list = []
        asking = threading.Thread(
            target=lambda: asked.append(
                request_stop(ep.core, timeout_s=drain_timeout, reason="the all-in-one command is stopping")
            ),
            name="stop",
            daemon=True,
        )
        asking.start()
        while asking.is_alive():
            # A child leaving well now follows the core's Stop; one that crashed or hung is started
            # again, so that the records reach a recorder.
            children.supervise(time.monotonic(), ended_on_purpose=lambda child: child.proc.returncode == 0)
            asking.join(POLL_S)
        failure = asked[0][1] if asked else (1, "the stop request failed")
        if failure is not None:
            log.error("%s: stopping every service by signal", failure[1])
    # Whatever still runs (the viewer; everything, if the core could not drain): dataflow order.
    for prefix in ("ingest", "metrics", "recorder", "encoder", "viewer"):
        for child in children.of(prefix):
            child.stop()
        for child in children.of(prefix):
            child.wait(10 if prefix != "recorder" else 60)
    return 1 if children.wait_all() else 0


def report(run_dir: Path | None, restarts: Mapping[str, int]) -> None:
    """What the run recorded, from its summary.json; the restarts, noted in it."""
    if restarts:
        log.warning("services started again during the run: %s", ", ".join(f"{k} x{v}" for k, v in restarts.items()))
    if run_dir is None:
        return
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        log.warning("the run left no readable summary.json in %s", run_dir)
        return
    for name, stream in summary["streams"].items():
        log.info("%s: frames %s", name, json.dumps(stream["frames"]))
    if restarts:
        # The recorder wrote the run's summary; only the launcher knows what it had to restart.
        summary["run"]["restarts"] = dict(restarts)
        partial = run_dir / "summary.json.partial"
        try:
            partial.write_text(json.dumps(summary, indent=2))
            partial.replace(run_dir / "summary.json")
        except OSError as exc:
            log.warning("summary.json does not say what was restarted: %s", disk_problem(exc, partial))
    log.info("run folder: %s", run_dir)


def check_streams(cfg: AllInOneConfig) -> int:
    """--test: each stream's connection, one after the other; 1 if any failed."""
    from encoders.services.ingest import main as ingest
    from encoders.services.ingest.config import IngestConfig

    failed = sum(ingest.check(IngestConfig.from_env(stream=url)) != 0 for url in cfg.stream)
    return 1 if failed else 0


def demo(cfg: AllInOneConfig, sim: PisimConfig) -> int:
    """pisim in this process, then the pipeline against it."""
    setup_logging("demo")
    from encoders.services.pisim.server import serve_in_thread

    model = {}
    if not os.environ.get("ENCODERS_PRETRAINED"):
        log.warning(
            "demo: ENCODERS_PRETRAINED is not set, so the model gets random weights (no download). "
            "Set ENCODERS_PRETRAINED=openai (needs internet once) or a checkpoint path for real embeddings."
        )
        model["pretrained"] = "none"
    server, url = serve_in_thread(sim)
    try:
        return run(dataclasses.replace(cfg, stream=(f"{url}/stream.mjpg",)), model=model)
    finally:
        server.shutdown()
        server.close()
