"""Where pisim's pictures come from: the synthetic scene, a video file or a folder of images.

``open_source(cfg)`` checks the source once at start-up (a clear error, not a broken
stream later); ``source.frames()`` then gives each client its own endless sequence of
JPEG bytes at the configured size (video files and folders loop).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Generator

from PIL import Image

log = logging.getLogger("encoders.pisim")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
FOLDER_CACHE = 256  # encoded folder images kept in memory (shared by all clients)


class SourceError(Exception):
    """The configured source cannot be served."""


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class SyntheticSource:
    def __init__(self, width: int, height: int, fps: float, quality: int, *, seed: int, scene_every: float) -> None:
        from .scene import SyntheticScene  # numpy is needed only for the synthetic scene

        self.scene = SyntheticScene(width, height, seed=seed, scene_every=scene_every)
        self.fps = fps
        self.quality = quality
        self.description = f"synthetic (seed {seed}, a new scene every {scene_every:g} s)"

    def frames(self) -> Generator[bytes, None, None]:
        # Scene time follows the frame count (not the clock), so a client's frames are the
        # same however fast it reads; at fps 0 there is no frame rate, so the clock it is.
        start = time.monotonic()
        index = 0
        while True:
            t = index / self.fps if self.fps > 0 else time.monotonic() - start
            yield encode_jpeg(self.scene.render(t, index), self.quality)
            index += 1


class FolderSource:
    def __init__(self, folder: str, width: int, height: int, quality: int) -> None:
        names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
        if not names:
            raise SourceError(f"source folder {folder!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.paths = [os.path.join(folder, n) for n in names]
        self.size = (width, height)
        self.quality = quality
        self.description = f"folder {folder} ({len(self.paths)} images)"
        self._cache: OrderedDict[str, bytes | None] = OrderedDict()
        self._lock = threading.Lock()

    def frames(self) -> Generator[bytes, None, None]:
        while True:
            served = 0
            for path in self.paths:
                jpeg = self._load(path)
                if jpeg is not None:
                    served += 1
                    yield jpeg
            if not served:
                log.error("no image in %s could be read: ending the stream", self.description)
                return

    def _load(self, path: str) -> bytes | None:
        with self._lock:
            if path in self._cache:
                self._cache.move_to_end(path)
                return self._cache[path]
        try:
            with Image.open(path) as img:
                jpeg = encode_jpeg(img.convert("RGB").resize(self.size, Image.Resampling.BILINEAR), self.quality)
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", path, exc)
            jpeg = None
        with self._lock:
            self._cache[path] = jpeg
            while len(self._cache) > FOLDER_CACHE:
                self._cache.popitem(last=False)
        return jpeg


def _cv2():
    try:
        import cv2
    except ImportError:
        raise SourceError(
            "reading a video file needs OpenCV: pip install 'encoders[pisim-video]' "
            "(opencv-python-headless), or use a folder of images or 'synthetic'"
        ) from None
    return cv2


class VideoSource:
    def __init__(self, path: str, width: int, height: int, quality: int) -> None:
        cv2 = _cv2()
        cap = cv2.VideoCapture(path)
        try:
            ok, frame = cap.read()
            if not ok or frame is None:
                raise SourceError(f"cannot read video file {path!r} (not a video, or a codec OpenCV lacks)")
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            src_h, src_w = frame.shape[:2]
        finally:
            cap.release()
        self.path = path
        self.size = (width, height)
        self.quality = quality
        self.description = f"video {path} ({src_w}x{src_h}, {count or '?'} frames, looping)"

    def frames(self) -> Generator[bytes, None, None]:
        cv2 = _cv2()
        cap = cv2.VideoCapture(self.path)
        try:
            read_since_open = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    if read_since_open == 0:
                        log.error("%s: no frame could be read: ending the stream", self.description)
                        return
                    cap.release()  # the end: loop from the start
                    cap = cv2.VideoCapture(self.path)
                    read_since_open = 0
                    continue
                read_since_open += 1
                if (frame.shape[1], frame.shape[0]) != self.size:
                    frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                yield encode_jpeg(Image.fromarray(rgb), self.quality)
        finally:
            cap.release()


def open_source(cfg) -> SyntheticSource | FolderSource | VideoSource:
    """The source named by ``cfg.source``, checked; SourceError says what is wrong."""
    if cfg.source == "synthetic":
        return SyntheticSource(cfg.width, cfg.height, cfg.fps, cfg.quality, seed=cfg.seed, scene_every=cfg.scene_every)
    if os.path.isdir(cfg.source):
        return FolderSource(cfg.source, cfg.width, cfg.height, cfg.quality)
    if os.path.isfile(cfg.source):
        return VideoSource(cfg.source, cfg.width, cfg.height, cfg.quality)
    raise SourceError(
        f"source {cfg.source!r}: no such file or folder (expected 'synthetic', a video file or a folder of images)"
    )
