"""The ingest's JPEGs while the core decides who embeds them (docs/PROTOCOL.md, "Protocol 3": the data link).

Pure logic, no sockets and no clock of its own. A frame the ingest may send (delivery.py) goes
into the outbox under a local id; ``notes()`` gives the captures to announce in one
``Captured`` (every FLUSH_S, 2 ms, after the first waiting, or at once with FLUSH_ROWS, 64,
waiting; and at once for a capture that came FLUSH_S or more after the one before: at a
camera's rate there is nothing to group it with, and waiting would only delay it); the core's
``Assigned`` says each one's seq and worker, and ``assign`` gives the frames to send, by worker,
forgetting them from the outbox (a worker of 0: dropped, forgotten at once).
What was sent stays in a ring of the last ``ring`` pictures (ENCODERS_PICTURE_RING, 256), by seq,
for previews and the recorder's snapshots.

Real time, the outbox holds at most ``limit`` captures (ENCODERS_OUTBOX, 64): past it the
oldest is given up (``overflow``: counted dropped by the core, as an undelivered frame is, if it
was not announced yet; announced, its seq is lost at the core, which sees its picture never came).
Lossless, captures enter only against credit, so the outbox never holds more than that.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from encoders.shared.messages import NO_WORKER, Assigned, Captured, CaptureNote, Frame

from .pictures import JpegFrame

FLUSH_S = 0.002  # a capture waits at most this long to be announced
FLUSH_ROWS = 64  # ... or until this many wait
ID_SPACE = 2**32  # a Captured's id column is u32: ids wrap


@dataclass
class Outbox:
    limit: int = 64  # real time: captures held at most (ENCODERS_OUTBOX)
    ring_size: int = 256  # pictures kept once sent (ENCODERS_PICTURE_RING)
    lossless: bool = False
    next_id: int = 0
    waiting: OrderedDict[int, JpegFrame] = field(default_factory=OrderedDict)  # not announced yet
    announced: OrderedDict[int, JpegFrame] = field(default_factory=OrderedDict)  # announced, not assigned yet
    ring: OrderedDict[int, Frame] = field(default_factory=OrderedDict)  # seq -> picture, the last sent
    first_at: float = 0.0  # when the oldest of ``waiting`` came
    last_at: float = float("-inf")  # when the last capture came
    alone: bool = False  # the captures waiting came apart (FLUSH_S or more after the one before): due at once
    decided: list[Frame] = field(default_factory=list)  # the last Assigned's pictures, dropped ones too
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("announced", "assigned", "dropped_by_core", "overflow", "unknown_ids", "forgotten"), 0
        )
    )

    def __len__(self) -> int:
        return len(self.waiting) + len(self.announced)

    def add(self, frame: JpegFrame, now: float) -> int:
        """A frame to announce; returns how many waiting (not announced) were given up to make room
        (the caller counts them undelivered); announced ones given up are counted ``overflow``."""
        given_up = 0
        if not self.lossless:
            while len(self) >= self.limit:
                if self.waiting:
                    self.waiting.popitem(last=False)
                    given_up += 1
                else:
                    self.announced.popitem(last=False)
                self.counts["overflow"] += 1
        if not self.waiting:
            self.first_at = now
            self.alone = now - self.last_at >= FLUSH_S
        self.last_at = now
        self.waiting[self.next_id] = frame
        self.next_id = (self.next_id + 1) % ID_SPACE
        return given_up

    def due(self, now: float) -> bool:
        """Whether the captures waiting are to be announced now."""
        return bool(self.waiting) and (self.alone or len(self.waiting) >= FLUSH_ROWS or now - self.first_at >= FLUSH_S)

    def wait_s(self, now: float) -> float | None:
        """How long until ``due`` (None: nothing waits)."""
        if not self.waiting:
            return None
        return 0.0 if self.alone else max(0.0, self.first_at + FLUSH_S - now)

    def notes(self) -> Captured | None:
        """The captures waiting, as one Captured (they are announced from now on), or None."""
        if not self.waiting:
            return None
        rows = [CaptureNote(i, f.t_arrival, len(f.jpeg), f.width, f.height) for i, f in self.waiting.items()]
        self.announced.update(self.waiting)
        self.counts["announced"] += len(self.waiting)
        self.waiting.clear()
        return Captured.of(rows)

    def unannounce(self, msg: Captured) -> int:
        """The Captured could not be sent: its captures are given up (returns how many)."""
        ids = msg.columns["id"].tolist()
        for i in ids:
            self.announced.pop(i, None)
        self.counts["announced"] -= len(ids)
        return len(ids)

    def assign(self, stream: str, msg: Assigned) -> dict[int, list[Frame]]:
        """The core's decisions: the pictures to send, by worker number, in seq order; the dropped ones
        forgotten. Each picture sent is kept in the ring."""
        out: dict[int, list[Frame]] = {}
        self.decided = []
        for row in msg.rows():
            jpeg = self.announced.pop(row.id, None)
            if jpeg is None:  # given up meanwhile (overflow), or of a session before
                self.counts["unknown_ids"] += 1
                continue
            frame = Frame(stream, row.seq, jpeg.t_arrival, jpeg.width, jpeg.height, jpeg.jpeg)
            self.decided.append(frame)  # dropped or not, numbered: a preview may show it
            if row.worker == NO_WORKER:
                self.counts["dropped_by_core"] += 1
                continue
            self.counts["assigned"] += 1
            out.setdefault(row.worker, []).append(frame)
            self.keep(frame)
        return out

    def keep(self, frame: Frame) -> None:
        self.ring[frame.seq] = frame
        while len(self.ring) > self.ring_size:
            self.ring.popitem(last=False)

    def pictures(self, seqs: list[int]) -> tuple[list[Frame], list[int]]:
        """The pictures of these seqs still in the ring (a snapshot wanted them), and the seqs gone from it."""
        found, gone = [], []
        for s in seqs:
            frame = self.ring.get(s)
            if frame is None:
                gone.append(s)
            else:
                found.append(frame)
        return found, gone

    def forget(self) -> int:
        """The session's life ended: what was announced means nothing to the next one (the core counts
        what it numbered and never saw embedded). Returns how many waiting (not announced) were given up."""
        waiting = len(self.waiting)
        self.counts["forgotten"] += len(self.announced)
        self.waiting.clear()
        self.announced.clear()
        return waiting
