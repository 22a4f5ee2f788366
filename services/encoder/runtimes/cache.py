"""Exported image towers on disk, so that a second start does not export again.

An entry is a folder named after its key's digest: the runtime's files and a
``manifest.json`` holding the key and every file's size and sha256. The key names what
the export depends on: the model, its weights (a fingerprint of the tensors, not the
checkpoint's path), the preprocessing, the export format, the precision, and the versions
of torch, open_clip and the runtime. So:

- an entry is used only if its manifest's key is this key and every file's size and
  sha256 match (about 0.2 s for ViT-B-32's 350 MB); otherwise it is stale or corrupt, and
  rebuilt, never used;
- an entry is built in a temporary folder beside it and renamed into place once whole, so
  nobody reads half an entry; builders of one key take a lock (``flock``) first, so two
  workers starting together export once, and the second uses what the first built.

Entries of other keys (older weights, older versions) stay until the folder is cleared,
which is always safe: what is missing is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def default_root() -> Path:
    """$XDG_CACHE_HOME/encoders, else ~/.cache/encoders."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "encoders"


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class ExportCache:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else default_root()

    def entry(self, name: str, key: dict[str, Any]) -> Path:
        """Where the entry for ``key`` lives; ``name`` makes the folder readable ("ViT-B-32-onnx-fp32")."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.root / f"{safe}-{key_digest(key)}"

    def get_or_build(self, name: str, key: dict[str, Any], build: Callable[[Path], None]) -> tuple[Path, bool]:
        """The folder of a whole entry for ``key``, and whether it was built now.

        ``build(folder)`` writes the runtime's files into an empty folder.
        """
        path = self.entry(name, key)
        if problem := check(path, key):
            if path.exists():
                log.warning("export cache %s is not usable (%s): rebuilding it", path, problem)
        else:
            return path, False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the export cache {self.root} (ENCODERS_MODEL_CACHE): {exc}") from exc
        with self._lock(path):
            if not check(path, key):  # another worker built it while we waited
                return path, False
            discard(path)
            for leftover in self.root.glob(f".{path.name}.*"):  # a build that died; none runs now (we hold the lock)
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=self.root))
            try:
                started = time.monotonic()
                build(tmp)
                write_manifest(tmp, key, time.monotonic() - started)
                os.rename(tmp, path)  # atomic: readers see no entry or a whole one
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return path, True

    @contextmanager
    def _lock(self, path: Path) -> Iterator[None]:
        with open(self.root / f".{path.name}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def write_manifest(folder: Path, key: dict[str, Any], seconds: float) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    if not files:
        raise RuntimeError("the export wrote no files")
    manifest = {"key": key, "files": files, "build_seconds": round(seconds, 1), "created": time.time()}
    # The manifest goes last: a folder without one is no entry.
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def check(path: Path, key: dict[str, Any]) -> str | None:
    """None if ``path`` is a whole entry for ``key``; otherwise what is wrong with it."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return "built for another model, weights or version"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    for name, meta in files.items():
        file = path / name
        try:
            if file.stat().st_size != meta["size"]:
                return f"{name} has the wrong size"
            if file_sha256(file) != meta["sha256"]:
                return f"{name} is corrupt (sha256 differs)"
        except (OSError, KeyError, TypeError) as exc:
            return f"{name}: {exc}"
    return None


def discard(path: Path) -> None:
    """Remove an entry: renamed away first, so a reader never sees it half deleted."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
