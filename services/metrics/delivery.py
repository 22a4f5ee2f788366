"""Acknowledged delivery of records to the recorder (docs/PROTOCOL.md, "The recorder: acknowledged delivery").

Every ``StreamStart``, ``MetricsRecord`` and ``EndOfStream`` is held until the recorder's
acknowledgement of its stream (``Acks``: per stream, ``(seq, ended)``) covers it; acks are
cumulative per stream. While a recorder session is ready (its ``Ready`` came), ``pump(send)``
sends what is not yet acknowledged, oldest first, at most ``window`` in flight; a new session
sends it all again. Consecutive records of one stream go as one ``Records`` (at most
``BATCH`` of them, within the window); starts and ends of streams as themselves. Records
held with the batch they were published in (``add_run``) go as that very batch while the
recorder keeps up (the run to send is exactly its rows), instead of being packed again. A batch is
still held and acknowledged per record: an ack may cover part of one, and only the rest is
sent again (regrouped) to a new session.

What an Ack covers, per stream (the recorder acks once what it got is durable):

- ``MetricsRecord(seq)``: any ack at ``seq`` or above;
- ``EndOfStream(last_seq)``: ``Ack(last_seq, ended=True)``, or any ack above ``last_seq``;
- ``StreamStart(first_seq)``: any ack at ``first_seq`` or above, or ``Ack(first_seq - 1,
  ended=True)`` (the end of an epoch that numbered nothing comes with its start's seq - 1).

The bound: at most ``hold`` records in memory. Past it the oldest (sent or not) go to the
spool (shared/spool.py) in the state folder, so the spool always holds the oldest of what
is unacknowledged and memory the newest: sending reads the spool from the first record not
sent in this session (``cursor``), then memory, which keeps each stream in order, a resend
included. The spool is committed as far as everything before is acknowledged and deleted once
it all is. Should writing the spool fail, those records are counted lost and logged: never
dropped silently. ``close()`` spools what memory still holds, for the next life of the core.
Records spooled are kept as their wire parts (about 2 KB, plus the thumbnail).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import msgpack

from encoders.shared import messages
from encoders.shared.disks import disk_problem
from encoders.shared.messages import DecodeError, EndOfStream, Message, MetricsRecord, Records, StreamStart
from encoders.shared.spool import Spool

log = logging.getLogger("encoders.metrics")

WINDOW = 10_000  # records in flight to the recorder (sent, not yet acknowledged)
READ_BATCH = 1000  # records read from the spool at a time
BATCH = 256  # consecutive records of a stream sent as one Records at most
START, RECORD, END = 0, 1, 2
Ack = tuple[int, bool]  # (seq, ended): the highest a stream's recorder acknowledged


@dataclass(slots=True)
class Held:
    """One unacknowledged record: where it stands in its stream, and where it is kept."""

    stream: str
    kind: int
    seq: int
    msg: Message | None  # None once it is in the spool
    end: int = 0  # in the spool: the byte offset just after it
    sent: bool = False  # sent in this session (or skipped: acknowledged before it went)
    acked: bool = False
    # The Records it was published in, with the records next to it (``add_run``): sent to the recorder
    # as it is when a run is exactly that batch, instead of packed again (a batch's cost, twice a record).
    batch: Records | None = None


def held(msg: Message) -> Held:
    if isinstance(msg, MetricsRecord):
        return Held(msg.stream, RECORD, msg.seq, msg)
    if isinstance(msg, StreamStart):
        return Held(msg.stream, START, msg.first_seq, msg)
    if isinstance(msg, EndOfStream):
        return Held(msg.stream, END, msg.last_seq, msg)
    raise TypeError(f"{type(msg).__name__} is not delivered to the recorder")


def covered(h: Held, ack: Ack | None) -> bool:
    """Does the stream's highest ack cover this record (the rules above)?"""
    if ack is None:
        return False
    seq, ended = ack
    if h.kind == RECORD:
        return seq >= h.seq
    if h.kind == END:
        return seq > h.seq or (ended and seq >= h.seq)
    return seq >= h.seq or (ended and seq >= h.seq - 1)


class Delivery:
    def __init__(self, spool_path: str | os.PathLike, hold: int, window: int = WINDOW) -> None:
        self.spool = Spool(spool_path)  # one left by an earlier life: sent first
        self.hold, self.window = hold, window
        self.memory: deque[Held] = deque()  # newest records, oldest first
        self.mem_sent = 0  # the first this many of memory were sent in this session
        self.cursor = self.spool.offset  # spool offset of the first record not sent in this session
        self.spooled: deque[Held] = deque()  # spool records from the committed offset, sent (or skipped)
        self.inflight: dict[str, deque[Held]] = {}  # per stream: sent and not acknowledged, in order
        self.n_inflight = 0
        self.acks: dict[str, Ack] = {}
        self.active = False  # a recorder session is ready to take records
        self.counts = {"records_sent": 0, "records_acked": 0, "records_spooled": 0, "records_lost": 0}

    # -- records and acks --------------------------------------------------------------------------

    def add(self, msg: Message) -> None:
        """A record to hold until acknowledged (sent by the next ``pump``)."""
        self.memory.append(held(msg))
        if len(self.memory) > self.hold:
            self._overflow()

    def add_run(self, msgs: list[MetricsRecord], batch: Records) -> None:
        """Consecutive records of one stream, published as ``batch`` (their rows, in order): held as ``add``
        holds each, the batch kept to be sent as it is while a recorder is ready (without one, the batch
        would only take memory: the records are packed again when one comes); let go once sent."""
        kept = batch if self.active else None
        for msg in msgs:
            h = held(msg)
            h.batch = kept
            self.memory.append(h)
        if len(self.memory) > self.hold:
            self._overflow()

    def _overflow(self) -> None:
        """Past ``hold`` records in memory: the oldest to the spool."""
        if not self.counts["records_spooled"]:
            log.warning(
                "more than %d records not acknowledged by a recorder: the oldest go to %s",
                self.hold,
                self.spool.path,
            )
        # Spill a tenth more than needed, so that the spool's fsync is paid once per many records.
        self._spill(len(self.memory) - self.hold + self.hold // 10)

    def ack(self, stream: str, seq: int, ended: bool) -> None:
        ack = max(self.acks.get(stream, (-2, False)), (seq, ended))
        self.acks[stream] = ack
        queue = self.inflight.get(stream)
        while queue and (queue[0].acked or covered(queue[0], ack)):
            h = queue.popleft()
            if not h.acked:
                h.acked = True
                self.n_inflight -= 1
                self.counts["records_acked"] += 1
        if queue is not None and not queue:
            del self.inflight[stream]
        self._trim()

    def pump(self, send: Callable[[Message], bool]) -> int:
        """Send what is due, oldest first, while the window allows and ``send`` succeeds; how many went."""
        n = 0
        while self.active and self.n_inflight < self.window:
            if self.cursor < self.spool.size():
                sent, more = self._pump_spool(send, min(READ_BATCH, self.window - self.n_inflight))
                n += sent
                if not more:
                    break
            elif self.mem_sent < len(self.memory):
                h = self.memory[self.mem_sent]
                if h.acked or covered(h, self.acks.get(h.stream)):
                    h.acked = h.sent = True
                    self.mem_sent += 1
                    continue
                run = [h]
                if h.kind == RECORD:  # and the records of its stream that follow it
                    limit = min(BATCH, self.window - self.n_inflight)
                    i = self.mem_sent + 1
                    while len(run) < limit and i < len(self.memory) and self._joins(run, self.memory[i]):
                        run.append(self.memory[i])
                        i += 1
                went = self._send_run(send, [(x, x.msg) for x in run])
                for x in run[:went]:
                    self._in_flight(x)
                self.mem_sent += went
                n += went
                if went < len(run):
                    break
            else:
                break
        self._trim()
        return n

    # -- sessions ----------------------------------------------------------------------------------

    def start_session(self) -> None:
        """A recorder is ready (its Ready): everything unacknowledged goes to it again, oldest first."""
        self._forget_sent()
        self.active = True

    def end_session(self) -> None:
        self._forget_sent()
        self.active = False

    @property
    def settled(self) -> bool:
        """Nothing is left unacknowledged."""
        return not self.memory and not self.spool.pending

    def stats(self) -> dict[str, int]:
        return {
            **self.counts,
            "records_held": len(self.memory),
            "records_in_flight": self.n_inflight,
            "spool_bytes": self.spool.size() - self.spool.offset,
        }

    def close(self) -> None:
        """Spool what memory holds (the next life of the core sends it), and release the spool."""
        if self.memory:
            lost = self.counts["records_lost"]
            n = len(self.memory)
            self._spill(n)
            if self.counts["records_lost"] == lost:  # else _spill said they are lost, and why
                log.info("%d records not acknowledged by a recorder kept in %s for the next start", n, self.spool.path)
        self.spool.close()

    # -- internals -----------------------------------------------------------------------------------

    def _in_flight(self, h: Held) -> None:
        h.sent, h.batch = True, None  # sent: a new session regroups it (the batch's memory goes now)
        self.inflight.setdefault(h.stream, deque()).append(h)
        self.n_inflight += 1
        self.counts["records_sent"] += 1

    def _joins(self, run: list[Held], h: Held) -> bool:
        """Whether ``h`` goes in the same Records as ``run``: the next record of its stream, not acknowledged."""
        return h.kind == RECORD and h.stream == run[0].stream and not (h.acked or covered(h, self.acks.get(h.stream)))

    def _send_run(self, send: Callable[[Message], bool], run: list[tuple[Held, Message | None]]) -> int:
        """Send a start, an end, or a run of one stream's records (as Records); how many of ``run`` went."""
        first = run[0][1]
        assert first is not None  # in memory, or read from the spool: the message itself
        if not isinstance(first, MetricsRecord):
            return 1 if send(first) else 0
        batch = run[0][0].batch
        if batch is not None and len(run) == batch.n and all(h.batch is batch for h, _msg in run):
            return batch.n if send(batch) else 0  # the batch published: these rows, in this order
        went = 0
        for batch in Records.many([cast(MetricsRecord, msg) for _h, msg in run]):
            if not send(batch):
                break
            went += batch.n
        return went

    def _pump_spool(self, send: Callable[[Message], bool], limit: int) -> tuple[int, bool]:
        """Send spooled records from the cursor: (how many went, False if ``send`` refused one)."""
        items: list[tuple[Held, Message | None]] = []
        for record, end in self._read_spool(limit):
            msg: Message | None = None
            try:
                msg = messages.decode(record["parts"])
                h = held(msg)
            except (DecodeError, TypeError, ValueError, KeyError) as exc:
                self.counts["records_lost"] += 1
                log.error("a record in %s does not decode (%s): lost", self.spool.path, exc)
                h = Held("", RECORD, 0, None, acked=True)
            h.msg, h.end = None, end  # the spool keeps it; memory keeps where it is
            items.append((h, msg))
        n, i = 0, 0
        while i < len(items):
            h = items[i][0]
            if h.acked or covered(h, self.acks.get(h.stream)):
                h.sent = h.acked = True  # acknowledged already: skipped, and committed with the rest
                self.spooled.append(h)
                self.cursor = h.end
                i += 1
                continue
            j = i + 1
            if h.kind == RECORD:
                while j < len(items) and j - i < BATCH and self._joins([h], items[j][0]):
                    j += 1
            run = items[i:j]
            went = self._send_run(send, run)
            for x, _msg in run[:went]:
                self._in_flight(x)
                self.spooled.append(x)
                self.cursor = x.end
            n += went
            if went < len(run):
                return n, False
            i = j
        return n, True

    def _read_spool(self, limit: int) -> list[tuple[Any, int]]:
        """Up to ``limit`` spooled records from the cursor, each with the offset just after it."""
        out: list[tuple[Any, int]] = []
        with open(self.spool.path, "rb") as f:
            f.seek(self.cursor)
            unpacker = msgpack.Unpacker(f, raw=False)
            for record in unpacker:
                out.append((record, self.cursor + unpacker.tell()))
                if len(out) >= limit:
                    break
        return out

    def _spill(self, n: int) -> None:
        """Move the ``n`` oldest records of memory to the spool (those acknowledged are just forgotten)."""
        taken = [self.memory.popleft() for _ in range(min(n, len(self.memory)))]
        self.mem_sent = max(0, self.mem_sent - len(taken))
        keep = [h for h in taken if not (h.acked or covered(h, self.acks.get(h.stream)))]
        records = []
        for h in keep:
            assert h.msg is not None  # from memory
            records.append({"parts": [bytes(part) for part in messages.encode(h.msg)]})
        base = self.spool.size()
        try:
            self.spool.append(records)
        except OSError as exc:
            self.counts["records_lost"] += len(keep)
            why = disk_problem(exc, self.spool.path)
            log.error("%d records the recorder has not acknowledged are LOST: %s", len(keep), why)
            for h in keep:
                if h.sent and not h.acked:
                    h.acked = True  # no longer waited for: it is gone
                    self.n_inflight -= 1
            return
        self.counts["records_spooled"] += len(keep)
        end = base
        for h, record in zip(keep, records, strict=True):
            end += len(msgpack.packb(record, use_bin_type=True))
            h.msg, h.batch, h.end = None, None, end
            if h.sent:
                # In flight: the spool had nothing unsent (memory is sent only after it), so the
                # cursor was at its end and moves past this record.
                self.spooled.append(h)
                self.cursor = end

    def _trim(self) -> None:
        """Forget acknowledged records at the front of memory; commit the spool as far as acknowledged."""
        while self.memory and self.memory[0].acked:
            self.memory.popleft()
            self.mem_sent = max(0, self.mem_sent - 1)  # an acknowledged record was always sent (or skipped)
        end = None
        while self.spooled and self.spooled[0].acked:
            end = self.spooled.popleft().end
        if end is not None:
            self.spool.commit(end)  # deletes the file once every record in it is acknowledged
            if not self.spool.pending:
                self.cursor = 0

    def _forget_sent(self) -> None:
        """Nothing counts as sent any more: the next session gets it all again."""
        for i in range(self.mem_sent):
            self.memory[i].sent = False  # acknowledged ones are skipped again when their turn comes
        self.mem_sent = 0
        self.cursor = self.spool.offset
        self.spooled.clear()
        self.inflight.clear()
        self.n_inflight = 0
