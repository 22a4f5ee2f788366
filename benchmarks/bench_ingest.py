"""The ingest's CPU cost per frame, by camera kind (issue #24): what one core can take.

For each size (640x480, 1920x1080, 3840x2160) and codec (H.264, H.265), a clip written here with
PyAV (a textured picture that moves, a keyframe a second at 30 fps), read through the ingest's
own video source (services/ingest/av_source.py: its decoding thread, sampling and hand-over)
and compressed to JPEG as the reader thread does (pictures.py), as fast as it goes:

- ``decode``: every frame decoded, none compressed (the floor of any use of the stream);
- ``every frame``: every frame decoded and sent on as a JPEG;
- ``sampled to 5``: 30 fps sampled to 5 (ENCODERS_SAMPLE_FPS=5: all decoded, 1 in 6 compressed);
- ``keyframes``: --keyframes-only (1 frame in 30 decoded and compressed);

and the JPEG compression alone (``to_jpeg``). MJPEG at the same sizes: what the MJPEG ingest
does with each frame (split from a multipart body, its header checked: http_source.py's work
per part, without the socket). Figures are CPU time of the whole process (every thread) per
frame of the camera, so ``x 30`` is CPU-ms per second of a 30 fps camera: under 1000, one core
keeps up.

BENCH_INGEST_SECONDS (3): seconds of video per clip (4K: at most 2 s, as its clips take long to make).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from encoders.services.ingest.av_source import AvSource
from encoders.services.ingest.config import IngestConfig
from encoders.services.ingest.mjpeg import MjpegSplitter
from encoders.services.ingest.pictures import JpegEncoder, Picture, to_jpeg
from encoders.shared.jpeg import jpeg_size

FPS = 30
SECONDS = float(os.environ.get("BENCH_INGEST_SECONDS", "3"))
SIZES = {"640x480": (640, 480), "1080p": (1920, 1080), "4K": (3840, 2160)}
CODECS = {"h264": "libx264", "h265": "libx265"}
MODES = {  # (ENCODERS_SAMPLE_FPS, --keyframes-only)
    "decode": (0.0, False),
    "every frame": (0.0, False),
    "sampled to 5": (5.0, False),
    "keyframes": (0.0, True),
}


def texture(w: int, h: int) -> np.ndarray:
    """A picture with detail at every scale (what a camera sees), which the clip pans across."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    coarse = np.asarray(Image.fromarray(small).resize((w * 2, h), Image.Resampling.BICUBIC), dtype=np.int16)
    fine = rng.integers(-6, 7, (h, w * 2, 3), dtype=np.int16)  # a sensor's noise
    return np.clip(coarse + fine, 0, 255).astype(np.uint8)


def write_clip(path: Path, size: tuple[int, int], codec: str, frames: int) -> None:
    w, h = size
    tex = texture(w, h)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(FPS), "keyint": str(FPS)}
        if codec == "libx265":
            stream.options["x265-params"] = f"log-level=error:keyint={FPS}:min-keyint={FPS}"
        for i in range(frames):
            x = (i * 7) % w  # pans a few pixels a frame
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(tex[:, x : x + w]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def cpu_per_frame(path: Path, mode: str, frames: int) -> tuple[float, int]:
    """CPU-ms (every thread) per frame of the clip through the video source, and the JPEGs sent on."""
    fps, keyframes = MODES[mode]
    cfg = IngestConfig(stream=str(path), file_rate="fast", reconnect=False, sample_fps=fps, keyframes_only=keyframes)
    source = AvSource(str(path), cfg)
    encode = JpegEncoder(cfg.jpeg_quality, cfg.max_frame_bytes, source.counters)
    sent = 0
    start = time.process_time()
    for picture in source.frames():
        if mode != "decode":
            encode(picture)
            sent += 1
    cpu = time.process_time() - start
    assert source.counters["parts"] == frames, (source.counters, frames)
    return cpu * 1000 / frames, sent


def jpeg_cost(path: Path) -> tuple[float, int]:
    """to_jpeg alone: CPU-ms a picture, and the JPEG's size."""
    with av.open(str(path)) as container:
        pictures = [f for _, f in zip(range(10), container.decode(video=0), strict=False)]
    items = [Picture(f, f.width, f.height, 0.0) for f in pictures]
    to_jpeg(items[0], 85)
    start = time.process_time()
    sizes = [len(to_jpeg(p, 85).jpeg) for p in items]
    return (time.process_time() - start) * 1000 / len(items), int(np.mean(sizes))


def mjpeg_cost(size: tuple[int, int], frames: int) -> float:
    """CPU-ms per frame of what the MJPEG ingest does with a part: split from the body, header checked."""
    tex = texture(*size)
    w = size[0]
    jpegs = []
    for i in range(min(frames, 10)):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(tex[:, i * 7 : i * 7 + w])).save(buf, "JPEG", quality=85)
        jpegs.append(buf.getvalue())
    body = b"".join(
        b"--FRAME\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(j), j)
        for j in (jpegs * (frames // len(jpegs) + 1))[:frames]
    )
    splitter = MjpegSplitter("FRAME")
    start = time.process_time()
    n = 0
    for i in range(0, len(body), 65536):
        for part in splitter.feed(body[i : i + 65536]):
            jpeg_size(part)
            n += 1
    return (time.process_time() - start) * 1000 / max(n, 1)


def main() -> dict:
    results: dict = {"fps": FPS, "seconds": SECONDS, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for size_name, size in SIZES.items():
            seconds = min(SECONDS, 2.0) if size_name == "4K" else SECONDS
            frames = int(FPS * seconds)
            mjpeg = mjpeg_cost(size, frames)
            print(f"{size_name} MJPEG: {mjpeg:.2f} CPU-ms a frame (split, header checked)")
            results["rows"].append({"size": size_name, "codec": "mjpeg", "mode": "split+check", "cpu_ms": mjpeg})
            for codec_name, codec in CODECS.items():
                path = Path(tmp) / f"{size_name}-{codec_name}.mp4"
                t0 = time.perf_counter()
                write_clip(path, size, codec, frames)
                made = time.perf_counter() - t0
                jpeg_ms, jpeg_bytes = jpeg_cost(path)
                row = {"size": size_name, "codec": codec_name, "frames": frames, "to_jpeg_ms": jpeg_ms}
                row["jpeg_kb"] = jpeg_bytes / 1024
                line = [f"{size_name} {codec_name} ({frames} frames, made in {made:.0f} s):"]
                line.append(f"to_jpeg {jpeg_ms:.2f} ms ({jpeg_bytes / 1024:.0f} KB)")
                for mode in MODES:
                    ms, sent = cpu_per_frame(path, mode, frames)
                    row[mode] = ms
                    row[f"{mode} sent"] = sent
                    line.append(f"{mode} {ms:.2f} ({ms * FPS:.0f} CPU-ms/s at 30 fps)")
                results["rows"].append(row)
                print(line[0], "; ".join(line[1:]), flush=True)
    one_core = next(r for r in results["rows"] if r["size"] == "1080p" and r["codec"] == "h264")
    per_second = one_core["sampled to 5"] * FPS
    results["one_core_1080p30_h264_sampled_to_5_cpu_ms_per_s"] = per_second
    print(
        f"1080p30 H.264 sampled to 5: {per_second:.0f} CPU-ms per second of video: one core "
        + ("keeps up" if per_second < 1000 else "does not keep up")
    )
    return results
