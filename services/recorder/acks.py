"""Which acknowledgements the recorder owes the core: per stream, the highest seq up to which everything is durable.

docs/PROTOCOL.md: the recorder acknowledges ``(stream, seq)`` once every record of that
stream up to ``seq`` is durable (its row committed to the database, or appended and synced
to the run's spool, or refused as invalid), and an end of stream with ``ended=True`` once
it is handled and everything before it is. Records of a stream arrive in seq order; rows
become durable in the order they were handed to the database writer. So each stream keeps
a queue of what it received, each entry marked once durable, and an acknowledgement is due
whenever entries at the front of the queue are: the highest seq among them.

Each entry may carry the stream's counts per life of the core as they stood once that record
was handled (``lives``, StreamSummary's): the counts of what is acknowledged are what a
recorder that resumes the run after a crash starts from (``durable_lives``), so that its
summary agrees with the rows stored, whatever was lost with it.

Plain logic, no sockets or time: the receive loop calls ``take()`` after each step and sends
what it returns, every stream's in one ``Acks``; ``floors()`` is what a new life of the session
announces (Ready, and an Acks of every stream, since the core may have missed the last ones).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from encoders.shared.messages import Ack

Lives = dict[str, dict[str, int | None]]  # core life -> counts (summary.StreamSummary.lives)


@dataclass
class _Entry:
    seq: int
    durable: bool
    ended: bool = False  # an end of stream, not a record
    lives: Lives | None = None  # the stream's counts once this was handled


class AckTracker:
    def __init__(self) -> None:
        self._floor: dict[str, int] = {}  # every record up to this seq is durable (and acknowledged)
        self._ended: dict[str, bool] = {}  # the last entry acknowledged was an end of stream
        self._queue: dict[str, deque[_Entry]] = {}
        self._rows: dict[tuple[str, int], _Entry] = {}  # rows the writer has not settled yet
        self._due: set[str] = set()
        self._again: set[str] = set()  # streams whose floor is to be said again (a record sent again)
        self.durable_lives: dict[str, Lives] = {}  # per stream, the counts of what is acknowledged
        self.lives_changed = False  # since the caller last saved durable_lives

    # -- what happened -----------------------------------------------------------------------

    def resume(self, stream: str, stored: int) -> None:
        """Everything of ``stream`` up to ``stored`` is in the database already (a resumed run)."""
        self._floor[stream] = max(stored, self._floor.get(stream, -1))

    def expect(self, stream: str, seq: int, lives: Lives | None = None) -> None:
        """A record whose row was handed to the writer: durable once ``durable`` says so."""
        entry = _Entry(seq, durable=False, lives=lives)
        self._queue.setdefault(stream, deque()).append(entry)
        self._rows[(stream, seq)] = entry

    def refused(self, stream: str, seq: int, lives: Lives | None = None) -> None:
        """A record refused as invalid (counted): nothing to wait for, acknowledged in its turn."""
        self._queue.setdefault(stream, deque()).append(_Entry(seq, durable=True, lives=lives))
        self._due.add(stream)

    def repeated(self, stream: str, seq: int) -> None:
        """A record sent again (seq at or below the last one handled): acknowledged again, never stored twice.

        If nothing of the stream is waiting, the floor covers it: said again now. Otherwise
        the entries waiting cover it, and their acknowledgement will.
        """
        if not self._queue.get(stream) and stream in self._floor:
            self._due.add(stream)
            self._again.add(stream)

    def unsent(self, acks: list[Ack]) -> None:
        """Acknowledgements taken and not sent (the lives file could not be written first): their streams'
        floors are said at the next ``take``, even where no more rows came (an ended stream)."""
        for ack in acks:
            self._due.add(ack.stream)
            self._again.add(ack.stream)

    def durable(self, stream: str, seq: int) -> None:
        """The row of (stream, seq) is committed, or appended and synced to the spool."""
        entry = self._rows.pop((stream, seq), None)
        if entry is not None:
            entry.durable = True
            self._due.add(stream)

    def ended(self, stream: str, last_seq: int, lives: Lives | None = None) -> None:
        """An end of stream, handled: acknowledged (ended) once everything before it is durable."""
        self._queue.setdefault(stream, deque()).append(_Entry(last_seq, durable=True, ended=True, lives=lives))
        self._due.add(stream)

    def note_lives(self, stream: str, lives: Lives) -> None:
        """Counts of records durable already (sent again, or restored): saved with the next acknowledgements."""
        self.durable_lives[stream] = lives
        self.lives_changed = True

    # -- what to send --------------------------------------------------------------------------

    def take(self) -> list[Ack]:
        """The acknowledgements that became due since the last call (at most one per stream)."""
        acks = []
        for stream in sorted(self._due):
            queue = self._queue.get(stream)
            moved = False
            while queue and queue[0].durable:
                entry = queue.popleft()
                self._floor[stream] = max(entry.seq, self._floor.get(stream, -1))
                self._ended[stream] = entry.ended
                if entry.lives is not None:
                    self.durable_lives[stream] = entry.lives
                    self.lives_changed = True
                moved = True
            if queue is not None and not queue:
                del self._queue[stream]
            if stream in self._floor and (moved or stream in self._again):
                acks.append(Ack(stream, self._floor[stream], ended=self._ended.get(stream, False)))
        self._due.clear()
        self._again.clear()
        return acks

    def floors(self) -> dict[str, int]:
        """Per stream, the highest seq up to which everything is durable (Ready's ``stored``)."""
        return dict(self._floor)

    def announce(self) -> list[Ack]:
        """An Ack per stream with a floor: for a new life of the session (the core may have missed some)."""
        return [Ack(s, seq, ended=self._ended.get(s, False)) for s, seq in sorted(self._floor.items())]

    def waiting(self) -> int:
        """Records received and not yet durable."""
        return len(self._rows)
