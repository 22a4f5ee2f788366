"""A spool: what could not be handed on yet (rows the database could not take, records the
recorder could not take), kept on disk until it can.

An append-only file of msgpack values, one per record, read back in the order written. Only
committed bytes are forgotten: ``commit(offset)`` moves the read position, and the file is
deleted once everything in it is committed. A crash while appending can leave half a
record at the end; opening the file cuts that tail off (it was never acknowledged).

The open file holds an exclusive ``flock``, so a process that looks for spools left by
earlier ones (a recorder, at start) never replays one that a live process is still writing.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import msgpack

log = logging.getLogger(__name__)


class SpoolLocked(RuntimeError):
    """Another process holds this spool."""


class Spool:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0  # bytes before this are committed
        self.appended = 0  # records appended by this process
        self.committed = 0  # records committed through this object
        self.discarded_bytes = 0  # a truncated tail cut off when the file was opened
        self._file: IO[bytes] | None = None
        if self.path.exists():
            self._open()

    # -- writing -------------------------------------------------------------------
    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Append records, then flush them to disk; returns how many. OSError (a full disk) leaves the
        file as it was: a half-written record would otherwise sit before the next ones."""
        data = bytearray()
        n = 0
        for record in records:
            data += msgpack.packb(record, use_bin_type=True)
            n += 1
        if not n:
            return 0
        f = self._open()
        end = f.seek(0, os.SEEK_END)
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            try:
                f.truncate(end)
            except OSError:
                pass  # cut off when the file is opened next (a write cut short)
            raise
        self.appended += n
        return n

    # -- reading -------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        """True while the file holds records not yet committed."""
        return self._file is not None and self.size() > self.offset

    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size if self._file is not None else 0

    def read_batch(self, max_records: int) -> tuple[list[Any], int]:
        """Up to ``max_records`` records from the committed position; and the offset after them."""
        if self._file is None:
            return [], self.offset
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            unpacker = msgpack.Unpacker(f, raw=False)
            out = []
            for record in unpacker:
                out.append(record)
                if len(out) >= max_records:
                    break
            return out, self.offset + unpacker.tell()

    def commit(self, offset: int, records: int = 0) -> None:
        """Everything before ``offset`` is safely in the database; delete the file when all is."""
        self.offset = offset
        self.committed += records
        if self.offset >= self.size():
            self.delete()

    def delete(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()  # closing releases the lock, after the file is gone
            self._file = None
        self.offset = 0

    def close(self) -> None:
        """Release the file (kept on disk) without committing anything."""
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- internals -----------------------------------------------------------------
    def _open(self) -> IO[bytes]:
        if self._file is None:
            f = open(self.path, "a+b")  # noqa: SIM115 - held (and locked) until close()
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise SpoolLocked(f"{self.path} is in use by another process") from None
            self._file = f
            self._cut_truncated_tail()
        return self._file

    def _cut_truncated_tail(self) -> None:
        """Find where the last whole record ends; drop anything after it."""
        f = self._file
        assert f is not None  # called by _open, on the file it just opened
        f.seek(0)
        unpacker = msgpack.Unpacker(f, raw=False)
        end = 0
        try:
            for _ in unpacker:
                end = unpacker.tell()
        except (msgpack.UnpackException, ValueError) as exc:
            # Not a crash's half record but damage; what follows it cannot be framed again.
            log.error("%s: unreadable data at byte %d (%s); the rest of the file is dropped", self.path, end, exc)
        size = os.fstat(f.fileno()).st_size
        if end < size:
            self.discarded_bytes = size - end
            log.warning(
                "%s: cut off %d bytes after the last complete record (a write cut short)", self.path, size - end
            )
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
