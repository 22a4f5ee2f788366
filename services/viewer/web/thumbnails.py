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
    path: Path  # the snapshot it is made of
    jpeg: bytes | None = None  # made at the first request that finds the file decodable

    def make(self) -> bytes | None:
        """The thumbnail, made now if not yet; None if the file is gone or does not decode.
        Reads the disk: call it off the event loop."""
        if self.jpeg is None and self.path.is_file():
            self.jpeg = make_thumbnail(self.path.read_bytes())
        return self.jpeg


class Thumbnails:
    def __init__(self, keep: int = THUMBNAILS_KEPT) -> None:
        self.keep = keep
        self._by_id: OrderedDict[str, Thumbnail] = OrderedDict()
        self._ids = itertools.count(1)
        self._id_of: dict[Path, str] = {}

    def add(self, path: Path) -> str:
        """The id of ``path``'s thumbnail (the same one while it is kept); now the newest."""
        tid = self._id_of.get(path)
        if tid is None or tid not in self._by_id:
            tid = f"{next(self._ids)}"
            self._by_id[tid] = Thumbnail(path)
            self._id_of[path] = tid
            while len(self._by_id) > self.keep:
                _old_id, old = self._by_id.popitem(last=False)
                self._id_of.pop(old.path, None)
        self._by_id.move_to_end(tid)
        return tid

    def get(self, tid: str) -> Thumbnail | None:
        return self._by_id.get(tid)
