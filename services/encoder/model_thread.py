"""The thread that runs the model, so that decoding the next batch overlaps with encoding this one.

torch releases the GIL while it computes, so the worker's main thread decodes JPEGs and
moves messages while this thread encodes (whatever embeds: embedder.py). At most one more batch waits its turn: frames
held beyond that would only wait, taking room the core could give another worker.
"""

from __future__ import annotations

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
        self.todo.put(None)
        self.thread.join(timeout=5)
