"""Which encoder worker gets the next frame, and what happens when none is free.

Workers ask for frames by sending credit (one credit = one frame they can take). Ingest
never sends a worker a frame it did not ask for, so no queue builds up in front of a
slow worker. When no worker has credit:

- real-time mode: at most ONE frame waits, the newest. A newer frame displaces it and
  the displaced one is dropped: a worker that frees up gets the freshest picture, not
  a stale backlog.
- lossless mode: frames wait and ``accepting`` turns False, so the caller stops reading
  the camera (backpressure) instead of dropping anything.

Pure logic: the caller passes the function that actually sends; it raises WorkerGone
when the worker cannot be reached any more.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
W = TypeVar("W", bound=Hashable)


class WorkerGone(Exception):
    """Sending to this worker failed for good (it has disconnected or stopped reading)."""


class CreditLedger(Generic[W]):
    """Credits per worker identity, handed out round-robin over the workers that have some."""

    def __init__(self) -> None:
        self._credits: dict[W, int] = {}  # insertion order = round-robin order
        self._next = 0

    def add(self, worker: W, n: int = 1) -> bool:
        """Give ``worker`` ``n`` more credits; True if the worker was not known before."""
        new = worker not in self._credits
        if new:
            self._credits[worker] = 0
        self._credits[worker] += max(0, int(n))
        return new

    def take(self) -> W | None:
        """One credit from the next worker in turn that has any (None: nobody has credit)."""
        workers = list(self._credits)  # a handful of workers: a copy per frame is cheap
        for i in range(len(workers)):
            idx = (self._next + i) % len(workers)
            worker = workers[idx]
            if self._credits[worker] > 0:
                self._credits[worker] -= 1
                self._next = idx + 1
                return worker
        return None

    def remove(self, worker: W) -> int:
        """Forget a worker; returns the credits it still had."""
        return self._credits.pop(worker, 0)

    def credit(self, worker: W) -> int:
        return self._credits.get(worker, 0)

    @property
    def workers(self) -> list[W]:
        return list(self._credits)

    @property
    def total(self) -> int:
        return sum(self._credits.values())

    def __contains__(self, worker: object) -> bool:
        return worker in self._credits


class Dispatcher(Generic[W, T]):
    """Hands items (T) to workers (W, their identities) by credit and applies the pending-frame policy."""

    def __init__(
        self,
        send: Callable[[W, T], None],
        *,
        lossless: bool,
        ledger: CreditLedger[W] | None = None,
        name: Callable[[W], str] = repr,
    ) -> None:
        self.send = send
        self.name = name  # how logs call a worker
        self.lossless = lossless
        self.ledger: CreditLedger[W] = ledger if ledger is not None else CreditLedger()
        self.waiting: deque[T] = deque()
        self.dispatched = 0
        self.workers_gone = 0

    @property
    def accepting(self) -> bool:
        """May the caller read the next frame? False while a lossless frame waits."""
        return not (self.lossless and self.waiting)

    @property
    def pending(self) -> T | None:
        return self.waiting[0] if self.waiting else None

    def offer(self, item: T) -> T | None:
        """A new item: sent to a worker, or kept waiting. Returns the item dropped for it, if any."""
        if not self.waiting and self._dispatch(item):
            return None
        displaced = None
        if self.waiting and not self.lossless:
            displaced = self.waiting.popleft()
        self.waiting.append(item)
        return displaced

    def credit(self, worker: W, n: int) -> int:
        """A worker asks for ``n`` more items; waiting items go out at once. Returns how many did."""
        self.ledger.add(worker, n)
        sent = 0
        while self.waiting and self._dispatch(self.waiting[0]):
            self.waiting.popleft()
            sent += 1
        return sent

    def take_waiting(self) -> list[T]:
        """Remove and return every waiting item (at shutdown, to be dropped)."""
        items = list(self.waiting)
        self.waiting.clear()
        return items

    def _dispatch(self, item: T) -> bool:
        while (worker := self.ledger.take()) is not None:
            try:
                self.send(worker, item)
            except WorkerGone as exc:
                lost = self.ledger.remove(worker) + 1
                self.workers_gone += 1
                log.warning("worker %s is gone (%s): forgot its %d credit(s)", self.name(worker), exc, lost)
                continue
            self.dispatched += 1
            return True
        return False
