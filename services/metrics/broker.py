"""Which worker gets which frame: the ZeroMQ guide's load-balancing broker (docs/PROTOCOL.md, "Workers").

Pure logic: the core offers numbered frames, ``assign(now)`` says which frames go to which
worker now, and results, departures and time say when a worker's hands are free again.

- A worker holds at most ``capacity`` frames (its Hello's: a batch being encoded and one
  being gathered), and at first fewer: its room starts at START_WINDOW frames and grows by one
  with each result it returns, up to its capacity (TCP's slow start). A worker that only
  takes frames, claiming a large capacity and answering nothing, so holds a few at a time,
  not every frame there is, until they are given up; an honest one is at full capacity after
  a few batches. A frame goes, among the workers with room in their window, to the one with
  the most of its capacity free (so equal workers share the frames); ties go to the one given
  a frame longest ago.
- Streams with a frame waiting are served in turn (round robin), so every camera gets the
  same share of the workers whatever the others send.
- Real time: at most ONE frame waits per stream, the newest; a newer capture displaces it,
  and ``offer`` returns the displaced frame (the core counts it dropped). Lossless: frames
  queue; the core bounds the queue by the credit it grants (``lossless_limit``).
- The broker records which worker holds which (stream, seq): a result is taken only from
  the worker holding that frame; a worker that leaves returns everything it held at once
  (lost); a frame held past ``hold_timeout`` (a message lost on a connection that ZeroMQ
  re-established underneath) is given up so that its capacity is not leaked forever.

Latency: a frame waits for at most one round of the streams with a frame waiting, then for the
frames its worker already holds: bounded by the capacity, whatever the number of cameras.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from encoders.shared.messages import Frame

Key = tuple[str, int]  # (stream, seq)
May = Callable[[bytes, str], bool]  # whether a worker may take a stream's frames now (links.py)
# A lossless stream may have this many frames queued or granted (between the two: the workers'
# total capacity): enough to keep every worker busy, few enough to hold the camera back soon.
LOSSLESS_MIN, LOSSLESS_MAX = 4, 64
START_WINDOW = 4  # frames a worker may hold before it has returned any result


@dataclass
class Worker:
    identity: bytes
    name: str
    capacity: int
    held: dict[Key, float] = field(default_factory=dict)  # -> when handed to it
    paused: bool = False  # a send to it failed: given nothing until heard from again
    given: int = 0  # when it was last given a frame (a count of frames handed out)
    window: int = START_WINDOW  # frames it may hold now: grows with the results it returns

    @property
    def room(self) -> int:
        """Frames it may be given now: within its capacity and the window it has earned."""
        return 0 if self.paused else min(self.capacity, self.window) - len(self.held)

    @property
    def free(self) -> int:
        """Of its capacity, what it does not hold: the workers with most of it go first, so that
        equal workers share the frames whatever windows they have earned so far."""
        return self.capacity - len(self.held)


class Broker:
    def __init__(self, hold_timeout: float) -> None:
        self.hold_timeout = hold_timeout
        self.waiting: dict[str, deque[Frame]] = {}
        self.turn: deque[str] = deque()  # streams with a frame waiting, in the order they are served
        self.workers: dict[bytes, Worker] = {}
        self.handed = 0  # frames handed to workers

    # -- frames ----------------------------------------------------------------------------------

    def offer(self, frame: Frame, lossless: bool) -> Frame | None:
        """A numbered frame waits for a worker; returns the frame it displaced (real time), if any."""
        queue = self.waiting.setdefault(frame.stream, deque())
        if not queue:
            self.turn.append(frame.stream)  # its place in line: kept by a frame that displaces another
        displaced = queue.popleft() if queue and not lossless else None
        queue.append(frame)
        return displaced

    def assign(self, now: float, may: May | None = None) -> list[tuple[bytes, Frame]]:
        """(worker identity, frame) for every frame that goes out now: streams in turn, the roomiest worker
        (of those that ``may(worker, stream)`` take the stream's frames, when given: a stream none of the
        workers with room may take keeps its frames waiting, and its place in line)."""
        out: list[tuple[bytes, Frame]] = []
        passed: list[str] = []  # streams no worker with room may take now
        while self.turn:
            worker = self._roomiest(self.turn[0], may)
            if worker is None:
                if may is None or self._roomiest() is None:
                    break
                passed.append(self.turn.popleft())
                continue
            stream = self.turn.popleft()
            queue = self.waiting[stream]
            frame = queue.popleft()
            if queue:
                self.turn.append(stream)
            else:
                del self.waiting[stream]
            worker.held[(stream, frame.seq)] = now
            self.handed += 1
            worker.given = self.handed
            out.append((worker.identity, frame))
        self.turn.extendleft(reversed(passed))
        return out

    def undo(self, identity: bytes, frame: Frame) -> None:
        """Sending ``frame`` to this worker failed: it waits again, first in line; the worker is paused."""
        worker = self.workers.get(identity)
        if worker is not None:
            worker.held.pop((frame.stream, frame.seq), None)
            worker.paused = True
        queue = self.waiting.setdefault(frame.stream, deque())
        if not queue:
            self.turn.appendleft(frame.stream)
        queue.appendleft(frame)

    def result(self, identity: bytes, stream: str, seq: int) -> bool:
        """A worker's result for (stream, seq): True if that worker held it (and now no longer does)."""
        worker = self.workers.get(identity)
        if worker is None or worker.held.pop((stream, seq), None) is None:
            return False
        worker.window = min(worker.capacity, worker.window + 1)
        return True

    def forget(self, identity: bytes, key: Key) -> None:
        """A frame assigned to this worker that will never reach it (its ingest is gone): no longer held."""
        worker = self.workers.get(identity)
        if worker is not None:
            worker.held.pop(key, None)

    def held_before(self, identity: bytes, stream: str, seq: int) -> list[Key]:
        """Frames of ``stream`` before ``seq`` this worker holds, taken from it: their pictures never came
        (outcomes of one stream and worker come in seq order: docs/PROTOCOL.md, "Protocol 3")."""
        worker = self.workers.get(identity)
        if worker is None:
            return []
        late = [key for key in worker.held if key[0] == stream and key[1] < seq]
        for key in late:
            del worker.held[key]
        return late

    def overdue(self, now: float) -> list[tuple[bytes, Key]]:
        """Frames held longer than ``hold_timeout``, taken from their workers: to be given up as lost."""
        out = []
        for worker in self.workers.values():
            late = [key for key, since in worker.held.items() if now - since > self.hold_timeout]
            for key in late:
                del worker.held[key]
                out.append((worker.identity, key))
            if late:  # it took frames and did not answer: back to a few at a time
                worker.window = START_WINDOW
        return out

    def take_waiting(self, stream: str, seqs: set[int]) -> list[Frame]:
        """These frames of ``stream``, if still waiting, taken away (their ingest is gone: to be dropped)."""
        queue = self.waiting.get(stream)
        if not queue:
            return []
        taken = [f for f in queue if f.seq in seqs]
        if taken:
            kept = deque(f for f in queue if f.seq not in seqs)
            if kept:
                self.waiting[stream] = kept
            else:
                del self.waiting[stream]
                self.turn.remove(stream)
        return taken

    def drop_waiting(self) -> list[Frame]:
        """Every frame waiting, taken away (a drain that cannot wait for workers any longer)."""
        frames = [frame for queue in self.waiting.values() for frame in queue]
        self.waiting.clear()
        self.turn.clear()
        return frames

    def give_up_held(self) -> list[Key]:
        """Every frame in workers' hands, taken away (a drain out of time): to be given up as lost."""
        keys = [key for worker in self.workers.values() for key in worker.held]
        for worker in self.workers.values():
            worker.held.clear()
        return keys

    def queued(self, stream: str) -> int:
        queue = self.waiting.get(stream)
        return len(queue) if queue else 0

    # -- workers ---------------------------------------------------------------------------------

    def add_worker(self, identity: bytes, name: str, capacity: int) -> list[Key]:
        """A worker's new life (its Hello): whatever its previous life held is returned, lost."""
        lost = self.remove_worker(identity)
        self.workers[identity] = Worker(identity, name, capacity)
        return lost

    def remove_worker(self, identity: bytes) -> list[Key]:
        """A worker gone (Bye, silence, a new life): the frames it held, lost at once."""
        worker = self.workers.pop(identity, None)
        return list(worker.held) if worker is not None else []

    def heard(self, identity: bytes) -> None:
        """The worker is reachable again (a message came from it): give it frames again."""
        worker = self.workers.get(identity)
        if worker is not None:
            worker.paused = False

    @property
    def capacity(self) -> int:
        return sum(w.capacity for w in self.workers.values())

    @property
    def in_use(self) -> int:
        return sum(len(w.held) for w in self.workers.values())

    @property
    def frames_waiting(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def lossless_limit(self) -> int:
        """Frames a lossless stream may have queued or granted."""
        return min(max(self.capacity, LOSSLESS_MIN), LOSSLESS_MAX)

    # -- internals ----------------------------------------------------------------------------------

    def _roomiest(self, stream: str = "", may: May | None = None) -> Worker | None:
        best: Worker | None = None
        for worker in self.workers.values():  # a handful of workers: a look at each per frame is cheap
            if worker.room <= 0 or (may is not None and not may(worker.identity, stream)):
                continue
            free = worker.free
            if best is None or free > best.free or (free == best.free and worker.given < best.given):
                best = worker
        return best
