"""The ingest service's settings (one camera)."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.messages import STREAM_NAME
from encoders.shared.settings import CoreConnection, SettingsError, setting


@dataclass
class IngestConfig(CoreConnection):
    stream: str = setting("", "MJPEG stream URL, e.g. http://<PI_IP>:8000/stream.mjpg (required)")
    stream_id: str = setting("cam0", "Name of this camera's stream; one ingest per camera, each with its own id")
    lossless: bool = setting(False, "Wait for a free encoder instead of dropping frames (video files, benchmarks)")
    max_frames: int = setting(0, "Stop after publishing this many frames (0 = never)", minimum=0)
    connect_timeout: float = setting(5.0, "Seconds to wait for the camera to answer", minimum=0.1)
    read_timeout: float = setting(10.0, "Seconds without data before the stream is reconnected", minimum=0.1)
    stall_after: float = setting(
        10.0,
        "Seconds a connected stream may go without one complete frame (bytes trickling in, a part that never "
        "ends) before it is counted as stalled and reopened (the alerts' stream_down is ENCODERS_STREAM_DOWN_AFTER)",
        minimum=0.1,
    )
    # max_frame_bytes, shared with every service (settings.FrameBytes): a larger part (a missed boundary, a
    # hostile server) is dropped, counted as oversized
    reconnect_max: float = setting(10.0, "Longest wait between reconnection attempts, seconds", minimum=0.1)
    reconnect: bool = setting(True, "Reconnect when the stream drops or ends (off: end the stream instead)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not STREAM_NAME.fullmatch(self.stream_id):
            raise SettingsError(f"--stream-id must be 1-64 letters, digits, '_', '.', '-': got {self.stream_id!r}")
