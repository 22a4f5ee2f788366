"""The recorder's loop: its session with the core, the pictures it asks for (snapshots), acknowledgements back.

The session is given to it (tests make their own); it owns no socket. It takes the
session's callbacks (``hello``, ``on_join``, ``on_lost``):

- each Hello names the run it records already, if any (a restarted core learns it), and
  asks for a takeover only until it is first welcomed;
- the first Welcome opens the run (``opener``: resumed or new, recording.py) and tells
  whoever waits that the recorder is ready; every Welcome is answered ``Ready(run, stored)``
  and an ``Acks`` of every stream, so a core that restarted, or lost acknowledgements, learns what is durable;
- a silent core is only logged: what is held is kept, the session says Hello again by itself,
  and records sent again are acknowledged without being written twice.

One ``step`` waits up to POLL_MS, takes the session's messages (``Records``, each record handed
on in order as before; the pictures it asked for, as ``Frame``s; ends of streams; a Stop), asks
for the snapshots those records are due (one ``WantPictures`` per stream), does the periodic work
(snapshots not come in time given up, the writer's batches, drift.csv flushed, summary.json, a
progress line) and sends the acknowledgements that became due, every stream's in one ``Acks``.

A step never waits for the database. It takes messages for TAKE_S at most, and none while the
writer is ``full`` (its batches' worth of rows waiting for the database: a backlog after an outage,
a slow server): the records wait, unread, in the session's queue and with the core, which holds
every record until it is acknowledged and sends at most its window unacknowledged. Meanwhile the
loop goes on: the session's heartbeats (and the core counted alive while its messages wait,
``CoreSession.behind``), the writer's batches, the acknowledgements of what they stored. So the
recorder's memory is bounded (the writer's rows, and the core's window in the queue), and a
recorder catching up keeps its session.

The recorder subscribes to nothing on the core's frames publisher (protocol 3, step 4): a
subscription there makes a stream watched, and its ingest send previews; its snapshots are asked
for by seq instead (recorder.py, "snapshots").
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import zmq

from encoders.shared.complaints import Complaints
from encoders.shared.disks import disk_problem
from encoders.shared.messages import (
    PROTOCOL,
    Acks,
    EndOfStream,
    Frame,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    NoPictures,
    Ready,
    Records,
    Stop,
    StreamStart,
    Welcome,
)
from encoders.shared.session import CoreSession, process_name

from .recording import Recording

log = logging.getLogger(__name__)
complain = Complaints(log, "the recorder's log")  # a full disk: said once, then counted

LOG_EVERY_S = 10.0  # a progress line, and summary.json as the run goes
FILE_FLUSH_S = 1.0
POLL_MS = 100
DRAIN_MAX = 500  # messages taken from one socket before looking at the other
TAKE_S = 0.2  # the longest a step takes messages for: heartbeats, the writer and acks are looked at in between

# (the run the core names, a keep-alive to call while a resumed run's files are rewritten) -> the recording
Opener = Callable[[str, Callable[[], None]], Recording]


class Receiver:
    def __init__(
        self,
        session: CoreSession,
        opener: Opener,
        *,
        takeover: bool = False,
        on_ready: Callable[[Recording], None] = lambda recording: None,
    ):
        self.session = session
        self.opener, self.on_ready = opener, on_ready
        self.takeover = takeover
        session.hello, session.on_join, session.on_lost = self.hello, self.on_join, self.on_lost
        self.recording: Recording | None = None
        self.stopping: str | None = None  # why the loop should end (the core said Stop)
        self.counters: Counter = Counter()  # until a run is open; then the recorder's
        self.poller = zmq.Poller()
        self.poller.register(session.sock, zmq.POLLIN)
        now = time.monotonic()
        self._next_log, self._next_flush, self._next_beat = now + LOG_EVERY_S, now + FILE_FLUSH_S, now
        self._summary_due = False

    # -- the session's callbacks -----------------------------------------------------------

    def hello(self) -> Hello:
        run = self.recording.run.name if self.recording is not None else ""
        return Hello("recorder", process_name(), PROTOCOL, run=run, takeover=self.takeover and not self.session.lives)

    def on_join(self, welcome: Welcome) -> None:
        first = self.recording is None
        if self.recording is None:
            self.recording = self.opener(welcome.run, self.keep_alive)
            self.recording.recorder.counters.update(self.counters)
            self.session.counters = self.counters = self.recording.recorder.counters
        recording = self.recording
        if not first and welcome.run and welcome.run != recording.run.name:
            log.warning("the core names run %s; this recorder goes on with its run %s", welcome.run, recording.run.name)
        recording.recorder.core = welcome.core
        acks = recording.acks
        stored = {stream: seq for stream, seq in acks.floors().items() if seq >= 0}
        self._send(Ready(recording.run.name, stored))
        announced = acks.announce()
        if announced:
            self._send(Acks.of(announced))
        log.info(
            "recording run %s for the core %s (%d streams stored so far)", recording.run.name, welcome.core, len(stored)
        )
        if first:
            self.on_ready(recording)

    def on_lost(self) -> None:
        log.info("keeping what is held; records the core sends again are acknowledged, not written twice")

    def keep_alive(self) -> None:
        """While the loop is busy (a resumed run's files rewritten): a heartbeat when one is due."""
        now = time.monotonic()
        if now >= self._next_beat:
            self._send(Heartbeat())
            self._next_beat = now + self.session.heartbeat_s / 2

    # -- the loop --------------------------------------------------------------------------

    def step(self) -> None:
        """Wait a little for messages, take them, do what is due. Raises the writer's DatabaseRefused,
        and SessionRefused when the core refuses this recorder."""
        recording = self.recording
        if recording is not None and recording.writer.full:
            recording.writer.wait(POLL_MS / 1000)  # for room: the records wait where they are
            self.session.behind(time.monotonic())
        elif self.session.sock in dict(self.poller.poll(POLL_MS)):
            self.take(DRAIN_MAX, until=time.monotonic() + TAKE_S)
        recording = self.recording  # opened by a Welcome just taken
        if recording is not None:
            self.ask_pictures()
            recording.writer.tick()
            if recording.writer.fatal is not None:
                raise recording.writer.fatal
            self._periodic(recording)
            self.send_acks()
        self.session.tick(time.monotonic())

    def take(self, limit: int, until: float | None = None) -> None:
        """The session's messages waiting (at most ``limit``), handled. With ``until`` (time.monotonic()):
        only until then, and while the writer has room; without, all of them (the last, at the end)."""
        for msg in self.session.take(time.monotonic(), limit=limit):
            self._handle(msg)
            if until is not None and (time.monotonic() >= until or self._full()):
                return

    def ask_pictures(self) -> None:
        """The snapshots the records taken are due, asked for: one WantPictures per stream. While the core
        is away the ask is lost, and the snapshot missed once its wait is over."""
        if self.recording is None:
            return
        for want in self.recording.recorder.wanted():
            if self.session.joined:
                self._send(want)
            else:
                self.counters["pictures_unasked"] += len(want.seqs())

    def await_pictures(self) -> None:
        """At the end: the pictures asked for and not come yet, waited for (each until its own deadline,
        ``snapshot_wait`` at most), so that the last records' snapshots are written."""
        if self.recording is None:
            return
        deadline = time.monotonic() + self.recording.recorder.settings.snapshot_wait
        while self.recording is not None and self.recording.recorder.waiting_pictures():
            now = time.monotonic()
            if now >= deadline:
                return
            if self.poller.poll(min(POLL_MS, int((deadline - now) * 1000) + 1)):
                self.take(DRAIN_MAX)
                self.ask_pictures()
            self.recording.recorder.expire(time.monotonic())
            self.session.tick(time.monotonic())

    def send_acks(self) -> None:
        """The acknowledgements that became due; while the core is away they wait for the next Welcome."""
        if self.recording is None:
            return
        if self._summary_due:  # an end of stream: its counts on disk before it is acknowledged
            self.recording.write_summary()
            self._summary_due = False
        acks = self.recording.acks.take()
        if self.recording.acks.lives_changed:  # the counts of what is acknowledged, on disk first
            try:
                self.recording.run.write_lives(self.recording.acks.durable_lives)
            except OSError as exc:  # a full disk: the acknowledgements wait for room, as rows do
                self.recording.acks.unsent(acks)
                complain("lives_unwritten", "%s; acknowledgements wait", disk_problem(exc, self.recording.run.dir))
                return
            self.recording.acks.lives_changed = False
        if acks and self.session.joined:
            self._send(Acks.of(acks))

    def log_progress(self) -> None:
        if self.recording is None:
            log.info("waiting for the core at %s", self.session.endpoint)
            return
        recorder, writer = self.recording.recorder, self.recording.writer
        streams = (
            ", ".join(
                f"{name} {f.summary.records} records {f.summary.snapshots} snapshots ({f.snapshots_missed} missed) "
                f"{f.batches.written} npz"
                for name, f in recorder.streams.items()
            )
            or "no records yet"
        )
        bad = self.counters.get("bad_messages", 0)
        log.info(
            "%s; database: %d rows written in %d commits, %d waiting, %d spooled; %d records not yet durable%s",
            streams,
            sum(writer.written.values()),
            writer.commits,
            len(writer.pending),
            writer.spooled,
            self.recording.acks.waiting(),
            f"; {bad} bad messages dropped" if bad else "",
        )

    # -- internals ---------------------------------------------------------------------------

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Stop):
            self.stopping = msg.reason or "the core asked"
            log.info("the core says stop (%s): finishing the run", self.stopping)
        elif self.recording is None:
            self.counters["messages_before_run"] += 1
        elif isinstance(msg, Records):
            on_message = self.recording.recorder.on_message
            for record in msg.rows():
                on_message(record)
        elif isinstance(msg, Frame | NoPictures):  # a picture it asked for (WantPictures), or word it won't come
            self.recording.recorder.on_message(msg)
        elif isinstance(msg, (MetricsRecord, EndOfStream, StreamStart)):
            self.recording.recorder.on_message(msg)
            self._summary_due |= isinstance(msg, EndOfStream)
        else:
            self.counters["ignored_messages"] += 1

    def _full(self) -> bool:
        """The writer has no room for more rows (until it has written a batch)."""
        return self.recording is not None and self.recording.writer.full

    def _periodic(self, recording: Recording) -> None:
        now = time.monotonic()
        recording.recorder.expire(now)
        recording.recorder.check_streams(now)
        if now >= self._next_flush:
            recording.recorder.flush_files()
            self._next_flush = now + FILE_FLUSH_S
        if now >= self._next_log:
            self.log_progress()
            recording.write_summary()
            self._next_log = now + LOG_EVERY_S

    def _send(self, msg: Message) -> None:
        try:
            self.session.send(msg, time.monotonic(), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.counters["messages_unsent"] += 1  # the core is away: the next Welcome's Ready says it all
