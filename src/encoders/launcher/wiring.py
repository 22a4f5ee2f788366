"""How the all-in-one command wires its services: endpoints in a private folder, and each one's settings.

Local services talk over ``ipc://`` endpoints in a folder only this user can enter, made
for the run and removed after it: no port is chosen and then bound later (another process
could take it in between), and nobody else on the machine can connect. With --bind-host
(viewers on other machines), the two publishers viewers subscribe to, each camera's frames
and metrics' records, also listen on TCP at that address, on a port the system picks; each
service logs the address it got ("listening on tcp://...").

Every service's settings are its ENCODERS_* variables (the user's), then this wiring on
top. Nothing here changes the environment or the settings it is given.
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
from encoders.services.viewer.config import ViewerConfig, is_loopback

from .config import RunConfig


@dataclass(frozen=True)
class Endpoints:
    """Where each socket of this run listens: ``folder`` is private to the run."""

    folder: Path
    cameras: int
    public_host: str | None = None  # --bind-host beyond loopback: publishers also listen on TCP there

    def local(self, name: str) -> str:
        return f"ipc://{self.folder / name}"

    def publisher(self, name: str) -> str:
        """A publisher viewers subscribe to: also on TCP when viewers may be elsewhere."""
        if self.public_host is None:
            return self.local(name)
        host = "*" if self.public_host in ("0.0.0.0", "*") else self.public_host
        return f"{self.local(name)},tcp://{host}:*"

    def frames(self, camera: int) -> str:
        return self.local(f"cam{camera}-frames")

    def work(self, camera: int) -> str:
        return self.local(f"cam{camera}-work")

    @property
    def all_frames(self) -> str:
        return ",".join(self.frames(i) for i in range(self.cameras))

    @classmethod
    def for_run(cls, folder: Path, cfg: RunConfig) -> Endpoints:
        return cls(folder, len(cfg.stream), None if is_loopback(cfg.bind_host) else cfg.bind_host)


@dataclass(frozen=True)
class Services:
    """Every service's settings for one run."""

    ingests: list[IngestConfig]
    encoder: EncoderConfig
    metrics: MetricsConfig
    recorder: RecorderConfig | None
    viewer: ViewerConfig | None

    def described(self, run: RunConfig) -> str:
        """The whole pipeline's settings as JSON, for the run's config.json."""
        return json.dumps(
            {
                "run": run.describe(),
                "ingest": [i.describe() for i in self.ingests],
                "encoder": self.encoder.describe(),
                "metrics": self.metrics.describe(),
                "viewer": self.viewer.describe() if self.viewer else None,
            },
            default=str,
        )


def services(
    cfg: RunConfig,
    ep: Endpoints,
    environ: Mapping[str, str],
    *,
    database_url: str,
    recorder_ready: Path,
    model: Mapping[str, Any] | None = None,
) -> Services:
    """Each service's settings: the environment's ENCODERS_* values, then this run's wiring.

    ``model``: settings of the model to use instead of the environment's (the demo's random
    weights when none are named).
    """
    model = dict(model or {})
    cameras = len(cfg.stream)
    ingests = [
        IngestConfig.from_env(
            environ,
            stream=url,
            stream_id=f"cam{i}",
            frames_bind=ep.publisher(f"cam{i}-frames"),
            work_bind=ep.work(i),
            metrics_in=ep.local("metrics-in"),
            lossless=cfg.lossless,
            max_frames=cfg.max_frames,
            reconnect=True,
        )
        for i, url in enumerate(cfg.stream)
    ]
    encoder = EncoderConfig.from_env(
        environ, work=",".join(ep.work(i) for i in range(cameras)), metrics_in=ep.local("metrics-in"), **model
    )
    if not encoder.threads:  # the machine's cores shared among the workers
        encoder = dataclasses.replace(encoder, threads=max(1, (os.cpu_count() or 1) // cfg.workers))
    metrics = MetricsConfig.from_env(
        environ,
        metrics_in_bind=ep.local("metrics-in"),
        metrics_bind=ep.publisher("metrics"),
        records_bind=ep.local("records") if cfg.save else "none",
        exit_after_streams=cameras,
    )
    recorder = None
    if cfg.save:
        recorder = RecorderConfig.from_env(
            environ,
            records=ep.local("records"),
            frames=ep.all_frames,
            database_url=database_url,
            runs_dir=cfg.runs_dir,
            run_dir="",  # the recorder names the run, and says which in its ready file
            stream_dirs=cameras > 1,
            exit_after_streams=cameras,
            ready_file=str(recorder_ready),
        )
    viewer = None
    if cfg.display or cfg.web:
        viewer = ViewerConfig.from_env(
            environ,
            frames=ep.all_frames,
            metrics=ep.local("metrics"),
            plot=cfg.plot,
            web=cfg.web,
            with_window=cfg.display,
            database_url=database_url,
            runs_dir=cfg.runs_dir,
            **model,
        )
    return Services(ingests, encoder, metrics, recorder, viewer)
