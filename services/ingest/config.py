"""The ingest service's settings (one camera)."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.messages import STREAM_NAME
from encoders.shared.settings import CoreConnection, SettingsError, setting

# Decoders the ingest runs by default: what cameras send. Each FFmpeg decoder is code that reads
# bytes from the camera's side, so the others are refused unless named (ENCODERS_CODECS).
DEFAULT_CODECS = "h264,hevc,mjpeg"


@dataclass
class IngestConfig(CoreConnection):
    stream: str = setting(
        "",
        "The camera (required): an MJPEG URL (http://<PI_IP>:8000/stream.mjpg), rtsp:// or rtsps:// (H.264, H.265), "
        "tcp://HOST:PORT (raw H.264, as rpicam-vid --listen serves it), or a video file (mp4, mkv)",
        secret="url",
    )
    stream_id: str = setting("cam0", "Name of this camera's stream; one ingest per camera, each with its own id")
    lossless: bool = setting(False, "Wait for a free encoder instead of dropping frames (video files, benchmarks)")
    outbox: int = setting(
        64,
        "Captures held while the core decides who embeds them (real time; lossless holds its credit): past it the "
        "oldest is given up, counted dropped (docs/PROTOCOL.md, the data link)",
        minimum=1,
        maximum=4096,
    )
    picture_ring: int = setting(
        256,
        "Pictures kept after they were sent to their worker, for previews and the recorder's snapshots (a snapshot "
        "asked for after its picture left the ring is missed)",
        minimum=1,
        maximum=65536,
    )
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
    # Video (RTSP, raw H.264, files), decoded here and sent on as JPEG: services/ingest/av_source.py.
    sample_fps: float = setting(
        0.0,
        "Video: pictures a second to send on (0 = every frame); the frames left out are counted dropped",
        minimum=0.0,
    )
    keyframes_only: bool = setting(
        False,
        "Video: decode keyframes only (the others are not decoded at all; counted dropped); with --sample-fps, "
        "at most that many of them a second",
    )
    rtsp_transport: str = setting(
        "tcp", "RTSP: carry the video over the RTSP connection (tcp) or udp", choices=("tcp", "udp")
    )
    file_rate: str = setting(
        "native",
        "Video file: play it at its own frame rate (native) or as fast as the pipeline takes it (fast)",
        choices=("native", "fast"),
    )
    loop: bool = setting(False, "Video file: play it again from the start when it ends")
    jpeg_quality: int = setting(
        85, "Video: quality of the JPEG each decoded picture is sent as", minimum=1, maximum=100
    )
    codecs: str = setting(
        DEFAULT_CODECS, "Video: the codecs the ingest decodes (FFmpeg's names, comma-separated); others are refused"
    )
    max_clock_drift: float = setting(
        2.0,
        "Video: seconds the stream's own timestamps may fall behind this machine's clock before capture times are "
        "anchored to it again (counted clock_resets)",
        minimum=0.1,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not STREAM_NAME.fullmatch(self.stream_id):
            raise SettingsError(f"--stream-id must be 1-64 letters, digits, '_', '.', '-': got {self.stream_id!r}")

    @property
    def codec_names(self) -> frozenset[str]:
        return frozenset(c.strip().lower() for c in self.codecs.split(",") if c.strip())
