"""The newest value of each key, written by the main loop's thread, read by web clients on asyncio.

This is how a slow browser drops frames at the viewer and nowhere else: there is no queue.
The writer replaces the value (and bumps its version) without ever waiting; each reader
takes the newest version when it is ready for one, and counts the versions it never saw.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable
from typing import Any


class Latest:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Hashable, tuple[int, Any]] = {}
        self._readers: dict[Hashable, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._wake_pending = False
        self.closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the readers' loop before any reader waits."""
        self._loop = loop
        self._changed = asyncio.Event()

    # -- the writer's side (any thread) --------------------------------------------------------

    def put(self, key: Hashable, value: Any) -> int:
        """Replace ``key``'s value; returns its new version (1 for the first). Never blocks on readers."""
        with self._lock:
            version = self._values.get(key, (0, None))[0] + 1
            self._values[key] = (version, value)
            loop = None if self._wake_pending else self._loop  # one wake-up pending is enough
            self._wake_pending = self._wake_pending or loop is not None
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop has closed: nobody is reading any more
                pass
        return version

    def readers(self, key: Hashable) -> int:
        """How many readers are following ``key`` now (the main loop renders only what is watched)."""
        with self._lock:
            return self._readers.get(key, 0)

    # -- the readers' side (the attached loop) -------------------------------------------------

    def get(self, key: Hashable) -> tuple[int, Any]:
        """(version, value); (0, None) before the first put."""
        with self._lock:
            return self._values.get(key, (0, None))

    async def newer(self, key: Hashable, than: int, timeout: float) -> tuple[int, Any] | None:
        """The newest (version, value) of ``key`` once its version is above ``than``; None after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            current = self.get(key)
            if current[0] > than:
                return current
            if self.closed:
                return None
            changed = self._changed  # every put swaps in a fresh event, so take it before waiting
            if changed is None:
                raise RuntimeError("attach() the board to the readers' loop before waiting on it")
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return None

    def follow(self, key: Hashable) -> _Following:
        """``with board.follow(key):`` counts a reader of ``key`` for as long as the block runs."""
        return _Following(self, key)

    def close(self) -> None:
        """On the loop: wake every reader for good (the server is stopping)."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:  # None: closed before any reader's loop was attached
            changed.set()


class _Following:
    def __init__(self, board: Latest, key: Hashable) -> None:
        self.board, self.key = board, key

    def __enter__(self) -> None:
        with self.board._lock:
            self.board._readers[self.key] = self.board._readers.get(self.key, 0) + 1

    def __exit__(self, *exc) -> None:
        with self.board._lock:
            self.board._readers[self.key] -= 1
