"""The Pi stand-in's settings."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.settings import Settings, setting


@dataclass
class PisimConfig(Settings):
    host: str = setting("127.0.0.1", "Interface to listen on")
    port: int = setting(8000, "Port to listen on (0 = any free port)", minimum=0, maximum=65535)
    source: str = setting("synthetic", "'synthetic', a video file, or a folder of images")
    width: int = setting(640, "Frame width (synthetic and resized sources)", minimum=16)
    height: int = setting(480, "Frame height", minimum=16)
    fps: float = setting(15.0, "Frames per second (0 = as fast as possible)", minimum=0.0)
    quality: int = setting(80, "JPEG quality", minimum=1, maximum=100)
    max_frames: int = setting(0, "End each client's stream after this many frames (0 = never)", minimum=0)
    scene_every: float = setting(4.0, "Synthetic scene: seconds between cuts to another scene", minimum=0.1)
    seed: int = setting(0, "Synthetic scene random seed")
    h264_port: int = setting(
        0,
        "Also serve the pictures as raw H.264 over TCP on this port, as rpicam-vid --listen does (0 = off)",
        minimum=0,
        maximum=65535,
    )
