"""Which embedded frames get a JPEG snapshot, and the pictures asked for to write them.

The recorder sees no picture but those it asks for (protocol 3, step 4): when a record
arrives that is due a snapshot (periodic, ``SnapshotPolicy``) or is a scene change, the
recorder asks the core for that seq (``WantPictures``, one message per stream per loop turn),
which asks the stream's ingest; the ingest answers from its ring of recently sent pictures,
and the core hands the picture to the recorder's session as a ``Frame``. ``Wants`` keeps one
stream's seqs asked for and not yet come: matched when a picture arrives, given up (a snapshot
missed) past a deadline, and bounded in number.
"""

from __future__ import annotations

from dataclasses import dataclass


class SnapshotPolicy:
    """One snapshot every ``interval`` seconds of capture time, as the seed did.

    The first embedded frame is due; after a snapshot at capture time t, the next is the
    first embedded frame captured at or after t + interval (interval 0: every frame). A
    due frame whose picture does not come is passed over (``missed``), and the next one
    to arrive after that is due.
    """

    def __init__(self, interval: float):
        self.interval = float(interval)
        self.last: float | None = None  # capture time of the last snapshot written, or asked for

    def due(self, t_capture: float) -> bool:
        return self.last is None or t_capture >= self.last + self.interval

    def taken(self, t_capture: float) -> None:
        self.last = t_capture

    def missed(self, t_capture: float, before: float | None) -> None:
        """The picture of the snapshot taken (asked for) at ``t_capture`` never came: due again from
        the next frame, unless a later one was taken since."""
        if self.last == t_capture:
            self.last = before


def snapshot_name(seq: int) -> str:
    return f"frame_{seq:06d}.jpg"


def scene_snapshot_name(seq: int) -> str:
    """A scene change's snapshot between two periodic ones: named apart, so frame_*.jpg stay periodic."""
    return f"scene_{seq:06d}.jpg"


# A stream's snapshots asked for and not yet come, at most: at the default interval (30 s) a stream
# has one at a time; scene changes come seconds apart. Past it a due snapshot is missed at once.
WANTS_MAX = 64
# How long the recorder waits for a picture it asked for (the round trip is milliseconds; an ingest
# that has gone or forgotten the seq never answers). The record's row waits as long (recorder.py).
WAIT_S = 2.0


@dataclass
class Want:
    """A snapshot asked for: the record's seq and capture time, what it is for, until when it may come."""

    seq: int
    t_capture: float
    periodic: bool  # its frame_*.jpg (the policy took it)
    scene: bool  # its scene change's picture
    deadline: float
    before: float | None = None  # the policy's last snapshot before this one (given back if missed)


class Wants:
    """One stream's seqs asked for: pure logic, the caller's clock (``now``)."""

    def __init__(self, limit: int = WANTS_MAX, wait_s: float = WAIT_S):
        self.limit, self.wait_s = limit, wait_s
        self._wants: dict[int, Want] = {}  # seq -> want, in the order asked (seq order: records come so)
        self._unsent: list[int] = []  # asked since the last ``to_send``

    def add(
        self, seq: int, t_capture: float, now: float, *, periodic: bool, scene: bool, before: float | None = None
    ) -> Want | None:
        """Ask for ``seq``; None (nothing asked) when ``limit`` wants are waiting already."""
        if len(self._wants) >= self.limit:
            return None
        want = Want(seq, t_capture, periodic, scene, now + self.wait_s, before)
        self._wants[seq] = want
        self._unsent.append(seq)
        return want

    def to_send(self) -> list[int]:
        """The seqs asked since the last call: one WantPictures' worth."""
        seqs, self._unsent = self._unsent, []
        return seqs

    def take(self, seq: int) -> Want | None:
        """The want a picture of ``seq`` answers (forgotten), or None: not asked, or given up already."""
        return self._wants.pop(seq, None)

    def expired(self, now: float) -> list[Want]:
        """The wants whose deadline passed (forgotten): their snapshots are missed."""
        gone = [w for w in self._wants.values() if w.deadline <= now]
        for want in gone:
            del self._wants[want.seq]
        return gone

    def waiting(self, seq: int) -> bool:
        return seq in self._wants

    def __len__(self) -> int:
        return len(self._wants)
