"""The recorder's loop: its session with the core, the frames it takes snapshots from, acknowledgements back.

The sockets are given to it (tests make their own); it owns none of them. It takes the
session's callbacks (``hello``, ``on_join``, ``on_lost``):

- each Hello names the run it records already, if any (a restarted core learns it), and
  asks for a takeover only until it is first welcomed;
- the first Welcome opens the run (``opener``: resumed or new, recording.py), connects the
  frames socket to the publisher the core names, and tells whoever waits that the recorder
  is ready; every Welcome is answered ``Ready(run, stored)`` and an Ack per stream, so a core
  that restarted, or lost acknowledgements, learns what is durable;
- a silent core is only logged: what is held is kept, the session says Hello again by itself,
  and records sent again are acknowledged without being written twice.

One ``step`` waits up to POLL_MS, takes frames (snapshots: best effort) and session messages
(records, ends of streams, a Stop), does the periodic work (the writer's batches, drift.csv
flushed, summary.json, a progress line) and sends the acknowledgements that became due.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import zmq

from encoders.shared import zmqio
from encoders.shared.endpoints import as_seen_from
from encoders.shared.messages import (
    PROTOCOL,
    EndOfStream,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    Ready,
    Stop,
    StreamStart,
    Welcome,
)
from encoders.shared.session import CoreSession, process_name
from encoders.shared.settings import split_addrs

from .recording import Recording

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # a progress line, and summary.json as the run goes
FILE_FLUSH_S = 1.0
POLL_MS = 100
DRAIN_MAX = 500  # messages taken from one socket before looking at the other

# (the run the core names, a keep-alive to call while a resumed run's files are rewritten) -> the recording
Opener = Callable[[str, Callable[[], None]], Recording]


class Receiver:
    def __init__(
        self,
        session: CoreSession,
        frames: zmq.Socket | None,
        opener: Opener,
        *,
        frames_endpoint: str = "",
        takeover: bool = False,
        on_ready: Callable[[Recording], None] = lambda recording: None,
    ):
        self.session, self.frames = session, frames
        self.opener, self.on_ready = opener, on_ready
        self.frames_endpoint, self.takeover = frames_endpoint, takeover
        session.hello, session.on_join, session.on_lost = self.hello, self.on_join, self.on_lost
        self.recording: Recording | None = None
        self.stopping: str | None = None  # why the loop should end (the core said Stop)
        self.counters: Counter = Counter()  # until a run is open; then the recorder's
        self._frames_connected: list[str] = []
        self.poller = zmq.Poller()
        self.poller.register(session.sock, zmq.POLLIN)
        if frames is not None:
            self.poller.register(frames, zmq.POLLIN)
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
        self._connect_frames(welcome)
        acks = recording.acks
        stored = {stream: seq for stream, seq in acks.floors().items() if seq >= 0}
        for msg in [Ready(recording.run.name, stored), *acks.announce()]:
            self._send(msg)
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
        ready = dict(self.poller.poll(POLL_MS))
        if self.frames is not None and self.frames in ready:
            self._drain_frames()
        if self.session.sock in ready:
            self.take(DRAIN_MAX)
        recording = self.recording
        if recording is not None:
            recording.writer.tick()
            if recording.writer.fatal is not None:
                raise recording.writer.fatal
            self._periodic(recording)
            self.send_acks()
        self.session.tick(time.monotonic())

    def take(self, limit: int) -> None:
        """The session's messages waiting (at most ``limit``), handled."""
        for msg in self.session.take(time.monotonic(), limit=limit):
            self._handle(msg)

    def send_acks(self) -> None:
        """The acknowledgements that became due; while the core is away they wait for the next Welcome."""
        if self.recording is None:
            return
        if self._summary_due:  # an end of stream: its counts on disk before it is acknowledged
            self.recording.write_summary()
            self._summary_due = False
        acks = self.recording.acks.take()
        if self.recording.acks.lives_changed:  # the counts of what is acknowledged, on disk first
            self.recording.run.write_lives(self.recording.acks.durable_lives)
            self.recording.acks.lives_changed = False
        for ack in acks:
            if self.session.joined:
                self._send(ack)

    def log_progress(self) -> None:
        if self.recording is None:
            log.info("waiting for the core at %s", self.session.endpoint)
            return
        recorder, writer = self.recording.recorder, self.recording.writer
        streams = (
            ", ".join(
                f"{name} {f.summary.records} records {f.summary.snapshots} snapshots {f.batches.written} npz"
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
        elif isinstance(msg, (MetricsRecord, EndOfStream, StreamStart)):
            self.recording.recorder.on_message(msg)
            self._summary_due |= isinstance(msg, EndOfStream)
        else:
            self.counters["ignored_messages"] += 1

    def _drain_frames(self) -> None:
        assert self.frames is not None
        for msg in zmqio.receive_waiting(self.frames, limit=DRAIN_MAX, topic=True, counters=self.counters):
            if self.recording is not None:
                self.recording.recorder.on_message(msg)  # JPEGs: taken without a copy

    def _periodic(self, recording: Recording) -> None:
        now = time.monotonic()
        recording.recorder.check_streams(now)
        if now >= self._next_flush:
            recording.recorder.flush_files()
            self._next_flush = now + FILE_FLUSH_S
        if now >= self._next_log:
            self.log_progress()
            recording.write_summary()
            self._next_log = now + LOG_EVERY_S

    def _connect_frames(self, welcome: Welcome) -> None:
        """The frames socket on the publisher the core names (as this machine reaches it), or the one given."""
        if self.frames is None:
            return
        if self.frames_endpoint:
            wanted = split_addrs(self.frames_endpoint)
        else:
            wanted = [as_seen_from(ep, self.session.endpoint) for ep in split_addrs(welcome.frames)]
        if wanted == self._frames_connected:
            return
        for ep in self._frames_connected:
            try:
                self.frames.disconnect(ep)
            except zmq.ZMQError:
                pass
        self._frames_connected = []
        for ep in wanted:
            try:
                self.frames.connect(ep)
                self._frames_connected.append(ep)
            except zmq.ZMQError as exc:
                log.error("cannot take snapshots from %s (named by the core): %s", ep, exc)
        if self._frames_connected:
            log.info("snapshots from the frames at %s", ", ".join(self._frames_connected))
        else:
            log.warning("no frames publisher to take snapshots from: the run has no snapshots")

    def _send(self, msg: Message) -> None:
        try:
            self.session.send(msg, time.monotonic(), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.counters["messages_unsent"] += 1  # the core is away: the next Welcome's Ready says it all
