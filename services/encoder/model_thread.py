"""The thread that runs the model, so that decoding the next batch overlaps with encoding this one.

torch releases the GIL while it computes, so the worker's main thread decodes JPEGs and
moves messages while this thread encodes (whatever embeds: embedder.py). At most one more batch waits its turn: frames
held beyond that would only wait, taking room the core could give another worker.

A finished batch wakes the main thread: a byte on a pipe (``wakeup``, a file descriptor its ZeroMQ
poller watches beside its sockets), so that the results go out at once, not at the poll's next
timeout (it polled every 5 ms while a batch ran: up to 5 ms more of latency a frame, issue #21).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from .embedder import Embedder
from .intake import Held

# A batch's frames, their embeddings (None if the batch failed), and the error if it did.
Result = tuple[list[Held], np.ndarray | None, Exception | None]


class ModelThread:
    """Runs the model on one batch at a time; at most one more batch waits its turn."""

    def __init__(self, encoder: Embedder, observe: Callable[[int, float], None] | None = None):
        self.encoder = encoder
        self.observe = observe or (lambda n, seconds: None)  # each batch's size and encode time (metrics)
        self.todo: queue.Queue = queue.Queue(maxsize=1)
        self.done: queue.Queue[Result] = queue.Queue()
        self.busy = 0  # batches submitted and not yet collected
        # A pipe, not an inproc socket: ZeroMQ polls a plain descriptor, and neither end needs a context.
        self.wakeup, self._wake = os.pipe()
        os.set_blocking(self.wakeup, False)
        os.set_blocking(self._wake, False)
        self._closed = False
        self.thread = threading.Thread(target=self._loop, name="model", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.todo.get()
            if job is None:
                return
            items, arrays = job
            try:
                started = time.perf_counter()
                vectors = self.encoder.embed_frames([h.frame.jpeg for h in items], arrays)
                self.observe(len(arrays), time.perf_counter() - started)
                self.done.put((items, vectors, None))
            except Exception as exc:  # a failed batch is reported, never silently lost
                self.done.put((items, None, exc))
            self._signal()

    def _signal(self) -> None:
        try:
            os.write(self._wake, b"\0")
        except (BlockingIOError, OSError):  # full: a wake-up is already waiting; closed: shutting down
            pass

    def woken(self) -> None:
        """The main thread saw ``wakeup`` readable: empty it (the results are taken by ``results``)."""
        try:
            while os.read(self.wakeup, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def has_room(self) -> bool:
        return self.busy < 2

    def submit(self, items: list[Held], arrays: list) -> None:
        self.busy += 1
        self.todo.put((items, arrays))

    def results(self, timeout: float = 0.0) -> Iterator[Result]:
        """The batches finished so far; waits up to ``timeout`` seconds for the first one."""
        try:
            while True:
                result = self.done.get(timeout=timeout)
                self.busy -= 1
                yield result
                timeout = 0.0
        except queue.Empty:
            return

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is in); may be called again."""
        if self._closed:
            return
        self._closed = True
        self.todo.put(None)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():  # a thread still in a batch would write to a closed (or reused) descriptor
            os.close(self.wakeup)
            os.close(self._wake)
