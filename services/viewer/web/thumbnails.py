"""Search results' thumbnails, by opaque id: a URL never names a path on this machine.

A search (routes.py, /api/search) registers each hit's snapshot file and hands the page
``api/thumbnail/ID.jpg``; the thumbnail is made from the file when it is first asked for.
Only the THUMBNAILS_KEPT most recently registered are kept: an older id is answered 404.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

THUMBNAILS_KEPT = 256
THUMB_WIDTH = 192
THUMB_QUALITY = 75


def make_thumbnail(jpeg: bytes, width: int = THUMB_WIDTH) -> bytes | None:
    """A small JPEG of ``jpeg``, ``width`` pixels wide (aspect kept); None if it does not decode."""
    data = np.frombuffer(jpeg, np.uint8)
    # libjpeg decodes at 1/2, 1/4 or 1/8 scale for a fraction of the cost of a full decode.
    img = cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_2)
    if img is None:
        return None
    if img.shape[1] < width:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if img is None:
            return None
    h, w = img.shape[:2]
    if w != width:
        img = cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, out = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    return out.tobytes() if ok else None


@dataclass
class Thumbnail:
    path: Path | None  # the snapshot it is made of (None: a stored thumbnail, ``jpeg`` from the start)
    jpeg: bytes | None = None  # made at the first request that finds the file decodable

    def make(self) -> bytes | None:
        """The thumbnail, made now if not yet; None if the file is gone or does not decode.
        Reads the disk: call it off the event loop."""
        if self.jpeg is None and self.path is not None and self.path.is_file():
            self.jpeg = make_thumbnail(self.path.read_bytes())
        return self.jpeg


class Thumbnails:
    def __init__(self, keep: int = THUMBNAILS_KEPT) -> None:
        self.keep = keep
        self._by_id: OrderedDict[str, Thumbnail] = OrderedDict()
        self._ids = itertools.count(1)
        self._id_of: dict[Any, str] = {}  # a snapshot's path, or a stored thumbnail's (run, stream, seq)
        self._key_of: dict[str, Any] = {}

    def add(self, path: Path) -> str:
        """The id of ``path``'s thumbnail (the same one while it is kept); now the newest."""
        return self._add(path, Thumbnail(path))

    def add_stored(self, key: tuple, jpeg: bytes) -> str:
        """The id of a thumbnail the database stored (``key``: its run, stream and seq)."""
        return self._add(key, Thumbnail(None, jpeg))

    def _add(self, key: Any, thumbnail: Thumbnail) -> str:
        tid = self._id_of.get(key)
        if tid is None or tid not in self._by_id:
            tid = f"{next(self._ids)}"
            self._by_id[tid] = thumbnail
            self._id_of[key] = tid
            self._key_of[tid] = key
            while len(self._by_id) > self.keep:
                old_id, _old = self._by_id.popitem(last=False)
                self._id_of.pop(self._key_of.pop(old_id), None)
        self._by_id.move_to_end(tid)
        return tid

    def get(self, tid: str) -> Thumbnail | None:
        return self._by_id.get(tid)
