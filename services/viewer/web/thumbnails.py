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

from ..scenes import make_thumbnail

THUMBNAILS_KEPT = 256


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
