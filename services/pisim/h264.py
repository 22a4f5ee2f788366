"""pisim's raw H.264 over TCP: what ``rpicam-vid --listen -o tcp://0.0.0.0:8888`` serves on a Pi.

``encoders pisim --h264-port 8888`` serves, beside /stream.mjpg, the same pictures as an H.264
elementary stream (Annex B, its headers before every keyframe as ``rpicam-vid --inline`` sends
them, a keyframe a second) to each client that connects, at the configured rate, so that
``encoders ingest --stream tcp://HOST:8888`` can be tried without a Pi. Unlike rpicam-vid, which
serves one client and exits, every client gets its own stream, as /stream.mjpg does.

Each client's frames are compressed with PyAV's libx264 (FFmpeg in PyAV's wheel) in the client's
thread; the source's JPEGs are decoded first, so this costs far more than a camera would: a
stand-in for tests and trials, not a video server. RTSP: README names servers to use
(mediamtx, GStreamer's test-launch).
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from fractions import Fraction

from PIL import Image

from .sources import SourceError

log = logging.getLogger("encoders.pisim")


class H264Server:
    def __init__(self, cfg, source) -> None:
        try:
            import av
        except ImportError:
            raise SourceError("serving H.264 needs PyAV: pip install 'encoders[pisim-h264]' (av)") from None
        self.av = av
        self.cfg, self.source = cfg, source
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self.sock = socket.create_server((cfg.host, cfg.h264_port), family=family)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.closing = threading.Event()
        self.clients_served = 0
        self.frames_served = 0
        self._threads: list[threading.Thread] = []
        self._accepting: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.cfg.host, self.cfg.host)
        return f"tcp://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> str:
        self._accepting = threading.Thread(target=self._accept, name="pisim-h264", daemon=True)
        self._accepting.start()
        return self.url

    def close(self) -> None:
        self.closing.set()
        if self._accepting is not None:
            self._accepting.join()
        self.sock.close()
        for thread in self._threads:
            thread.join(2)

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, addr = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=self._serve, args=(conn, addr), name="pisim-h264-client", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _encoder(self):
        cfg = self.cfg
        rate = Fraction(cfg.fps).limit_denominator(1001) if cfg.fps > 0 else Fraction(30)
        enc = self.av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = cfg.width, cfg.height, "yuv420p"
        enc.time_base, enc.framerate = 1 / rate, rate
        enc.gop_size = max(1, round(rate))
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "repeat-headers=1"}
        enc.open()
        return enc

    def _serve(self, conn: socket.socket, addr) -> None:
        cfg = self.cfg
        self.clients_served += 1
        log.info("client %s:%s connected for raw H.264", *addr[:2])
        sent, why = 0, "server closing"
        frames = self.source.frames()
        try:
            with conn:
                conn.settimeout(10.0)  # a client that takes nothing for this long is let go
                enc = self._encoder()
                start = time.monotonic()
                for jpeg in frames:
                    if cfg.fps > 0:
                        delay = start + sent / cfg.fps - time.monotonic()
                        if delay > 0 and self.closing.wait(delay):
                            break
                    if self.closing.is_set():
                        break
                    with Image.open(io.BytesIO(jpeg)) as img:
                        frame = self.av.VideoFrame.from_image(img.convert("RGB"))
                    frame.pts = sent
                    conn.sendall(b"".join(bytes(p) for p in enc.encode(frame)))
                    sent += 1
                    self.frames_served += 1
                    if cfg.max_frames and sent >= cfg.max_frames:
                        conn.sendall(b"".join(bytes(p) for p in enc.encode(None)))
                        why = f"max_frames ({cfg.max_frames}) reached"
                        break
                else:
                    why = "the source ended"
        except OSError as exc:
            why = f"client gone ({type(exc).__name__})"
        finally:
            frames.close()
            log.info("client %s:%s: raw H.264 ended after %d frames: %s", *addr[:2], sent, why)
