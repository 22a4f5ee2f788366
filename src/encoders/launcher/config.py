"""The all-in-one command's settings (`encoders --stream URL ...`, `encoders run`, `encoders demo`).

Not a recorded run (services/recorder/run.py's RecordedRun, storage's RunRow): the settings
of the command that starts every service on this machine."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.settings import setting
from encoders.shared.storage.config import DatabaseConfig


@dataclass
class AllInOneConfig(DatabaseConfig):
    stream: tuple[str, ...] = setting(
        (),
        "Camera URL (MJPEG over HTTP, rtsp://, tcp://HOST:PORT raw H.264, or a video file); once per camera (required)",
        secret="url",
    )
    display: bool = setting(True, "Show the live video window (--no-display: headless)")
    plot: bool = setting(True, "Show the matplotlib drift plot")
    save: bool = setting(True, "Store embeddings, drift and snapshots (--no-save: nothing is written)")
    test: bool = setting(False, "Test the connection to each stream, then exit")
    duration: float = setting(0.0, "Stop after this many seconds (0 = until Q, Ctrl+C or the streams end)", minimum=0)
    max_frames: int = setting(0, "Stop after this many frames per stream (0 = no limit)", minimum=0)
    workers: int = setting(1, "Encoder worker processes", minimum=1)
    lossless: bool = setting(False, "Embed every frame, slowing the stream instead of dropping frames")
    bind_host: str = setting(
        "127.0.0.1",
        "Interface the core also listens on, for viewers and workers elsewhere (0.0.0.0: every one; needs "
        "ENCODERS_KEYS, or ENCODERS_INSECURE=1 on a trusted network)",
    )
    web: str = setting(
        "",
        "Serve the web viewer for this run on HOST:PORT (PORT alone: localhost; beyond localhost it needs "
        "ENCODERS_WEB_TOKEN)",
    )
    drain_timeout: float = setting(
        120.0,
        "Seconds the pipeline may take at the end to give every frame its outcome and store every record; past "
        "it the services are stopped by signal, and records not stored wait in <runs-dir>/.core for the next start",
        minimum=1.0,
    )
    hang_after: float = setting(
        20.0,
        "A service that answered its health check once and then gives no answer for this many seconds is hung: "
        "killed and started again (0 = never; services whose Prometheus port is none are not watched)",
        minimum=0.0,
    )
