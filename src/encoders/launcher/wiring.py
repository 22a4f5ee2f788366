"""How the all-in-one command wires its services: the core's sockets in a private folder, and each one's settings.

Every service connects to one address, the core's (docs/PROTOCOL.md). Locally that is an
``ipc://`` endpoint in a folder only this user can enter, made for the run and removed
after it: no port is chosen and then bound later (another process could take it in
between), and nobody else on the machine can connect. With --bind-host beyond loopback
(viewers or workers on other machines), the core also listens on that interface at its
well-known ports (5556 for sessions, 5555 and 5558 for the publishers), as a core started
on its own does; a port in use there stops the run at start, saying which.

Every service's settings are its ENCODERS_* variables (the user's), then this wiring on top.
Nothing here changes the environment or the settings it is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoders.services.encoder.config import EncoderConfig
from encoders.services.ingest.config import IngestConfig
from encoders.services.metrics.config import MetricsConfig
from encoders.services.recorder.config import RecorderConfig
from encoders.services.viewer.config import ViewerConfig
from encoders.shared.endpoints import CORE_PORT, FRAMES_PORT, METRICS_PORT, is_loopback_host

from .config import AllInOneConfig


@dataclass(frozen=True)
class Endpoints:
    """Where the core of this run listens: ``folder`` is private to the run."""

    folder: Path
    public_host: str | None = None  # --bind-host beyond loopback

    def _bind(self, name: str, port: int) -> str:
        local = f"ipc://{self.folder / name}"
        if self.public_host is None:
            return local
        host = "*" if self.public_host in ("0.0.0.0", "*") else self.public_host
        return f"{local},tcp://{host}:{port}"

    @property
    def core(self) -> str:
        """What the local services connect to."""
        return f"ipc://{self.folder / 'core'}"

    @property
    def core_bind(self) -> str:
        return self._bind("core", CORE_PORT)

    @property
    def frames_bind(self) -> str:
        return self._bind("frames", FRAMES_PORT)

    @property
    def metrics_bind(self) -> str:
        return self._bind("metrics", METRICS_PORT)

    @classmethod
    def for_run(cls, folder: Path, cfg: AllInOneConfig) -> Endpoints:
        return cls(folder, None if is_loopback_host(cfg.bind_host) else cfg.bind_host)


CORE_STATE = ".core"  # in the runs folder, beside the embedded database's .pgdata


def core_state_dir(cfg: AllInOneConfig, folder: Path) -> Path:
    """Where the core keeps its frame numbers and the records its recorder has not acknowledged.

    With a recorder, in the runs folder: the records must outlive the command when the final
    drain cannot deliver them (a recorder hung, a disk full), and the next start stores them
    into their run (services/recorder/left_records.py); the numbers go on across commands too.
    Without one (--no-save) nothing is kept: the run's private ``folder``.
    """
    return Path(cfg.runs_dir) / CORE_STATE if cfg.save else folder / "core-state"


@dataclass(frozen=True)
class Services:
    """Every service's settings for one run."""

    core: MetricsConfig
    recorder: RecorderConfig | None
    encoder: EncoderConfig
    ingests: list[IngestConfig]
    viewer: ViewerConfig | None

    def described(self, all_in_one: AllInOneConfig) -> str:
        """The whole pipeline's settings as JSON, for the run's config.json (the all-in-one command's
        own under "run", its command's name)."""
        return json.dumps(
            {
                "run": all_in_one.describe(),
                "metrics": self.core.describe(),
                "encoder": self.encoder.describe(),
                "ingest": [i.describe() for i in self.ingests],
                "viewer": self.viewer.describe() if self.viewer else None,
            },
            default=str,
        )


def services(
    cfg: AllInOneConfig,
    ep: Endpoints,
    environ: Mapping[str, str],
    *,
    database_url: str,
    recorder_ready: Path,
    state_dir: Path,
    model: Mapping[str, Any] | None = None,
) -> Services:
    """Each service's settings: the environment's ENCODERS_* values, then this run's wiring.

    ``state_dir``: the core's (core_state_dir).

    ``model``: settings of the model to use instead of the environment's (the demo's random
    weights when none are named).
    """
    model = dict(model or {})
    core = MetricsConfig.from_env(
        environ,
        core_bind=ep.core_bind,
        frames_bind=ep.frames_bind,
        metrics_bind=ep.metrics_bind,
        state_dir=str(state_dir),
        recorder=cfg.save,
    )
    recorder = None
    if cfg.save:
        recorder = RecorderConfig.from_env(
            environ,
            core=ep.core,
            database_url=database_url,
            runs_dir=cfg.runs_dir,
            run_dir="",  # the recorder names the run, and says which in its ready file
            stream_dirs=len(cfg.stream) > 1,
            ready_file=str(recorder_ready),
        )
    encoder = EncoderConfig.from_env(environ, core=ep.core, **model)
    if not encoder.threads:  # the machine's cores shared among the workers
        encoder = dataclasses.replace(encoder, threads=max(1, (os.cpu_count() or 1) // cfg.workers))
    ingests = [
        IngestConfig.from_env(
            environ,
            core=ep.core,
            stream=url,
            stream_id=f"cam{i}",
            lossless=cfg.lossless,
            max_frames=cfg.max_frames,
            reconnect=True,
        )
        for i, url in enumerate(cfg.stream)
    ]
    # One machine, one Prometheus port per process: the i-th camera's ingest on ingest's port + i.
    ingests = [
        dataclasses.replace(c, prometheus_port=c.prometheus_port_setting("ingest", i)) for i, c in enumerate(ingests)
    ]
    viewer = None
    if cfg.display or cfg.web:
        viewer = ViewerConfig.from_env(
            environ,
            core=ep.core,
            plot=cfg.plot,
            web=cfg.web,
            with_window=cfg.display,
            database_url=database_url,
            runs_dir=cfg.runs_dir,
            **model,
        )
    return Services(core, recorder, encoder, ingests, viewer)
