"""The recorder's database writer: rows in, batches out, nothing lost while the database is away.
(One state machine, batches, spool, replay and the watchdog on a write: longer than 350 lines for it.)

It tells its owner which rows became durable (``on_durable``, in the order the rows were
added): committed to the database, or appended to the run's spool and synced. The
recorder acknowledges records to the core from that (acks.py, docs/PROTOCOL.md).

A database that hangs (a table locked, a server stopped or frozen) is bounded three ways: the
server cancels a statement past its statement timeout (connection.py), a batch still being
written after ``warn_after`` is said in the log once, and one still unfinished after
``give_up_after`` (the server did not even cancel it: it is not answering) has its connection
cut: it fails, its rows go to the spool, and are written again once the database answers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from encoders.shared.backoff import Backoff
from encoders.shared.disks import disk_problem
from encoders.shared.spool import Spool
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable
from encoders.shared.storage.frames import FrameRow

from .config import DB_MAX_WAITING_BATCHES
from .quarantine import ENCODING_ERRORS, Quarantine, RowsRefused, row_refusal, write_isolating
from .rows import from_spool, to_spool

log = logging.getLogger(__name__)

# A run's spool: the rows the database has not taken yet, in its folder.
SPOOL_NAME = "db_spool.msgpack"
WRITE_WARN_S = 10.0  # a batch still being written after this long is said in the log
GIVE_UP_GRACE_S = 10.0  # past the statement timeout by this much, a batch's connection is cut
# The receive loop looks at the batch being written every turn (a tenth of a second), and a caller that
# waits for it every WATCH_STEP_S. A longer gap between two looks is a pause of this process (SIGSTOP,
# a frozen VM, a machine starved of CPU): the batch's clock leaves it out, or a recorder woken from a
# pause would cut a healthy connection whose batch it had no chance to finish.
WATCH_STEP_S = 0.5
PAUSE_S = 2.0
# A batch gathered while the database was busy holds at most what it has been taking in this share of
# warn_after: rows that are keyframes go into the HNSW index, a few hundred a second on a busy 2-core
# box, and a batch of thousands of them would otherwise run into the statement timeout, be taken for
# an outage and go to the spool, again and again.
PACE_SHARE = 0.5
PACE_WEIGHT = 0.5  # the latest batch's weight in the pace (rows a second) the writer goes by


def give_up_after(statement_timeout: float) -> float | None:
    """When a batch is given up (its connection cut): the server had its statement timeout to
    cancel it, and this grace to say so. None (never) without a statement timeout."""
    return statement_timeout + GIVE_UP_GRACE_S if statement_timeout > 0 else None


def writer_thread() -> ThreadPoolExecutor:
    """Where the recorder's batches are written: one thread, so batches stay in order."""
    return ThreadPoolExecutor(1, thread_name_prefix="db-writer")


class Inline(Executor):
    """Runs each batch in the caller, at once: for callers that have nothing else to do meanwhile."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class FrameWriter:
    """Rows in, database batches out; nothing lost while the database is away.

    Rows wait in memory until ``batch_rows`` of them are waiting or the oldest is
    ``flush_s`` old. A batch the database does not take goes to the spool; while the
    spool holds anything, new rows queue behind it there (order kept), and the spool is
    replayed with exponential backoff between attempts.

    One batch at a time is handed to ``executor``, which writes it while the caller goes on
    receiving: in the recorder a thread of its own (``writer_thread()``: psycopg waits for
    the server without holding the GIL, and the server's work per batch is as long as the
    recorder's own); in tests that want each batch settled at once, ``Inline()``. Its
    outcome is taken before the next batch goes out, so batches reach the database, or the
    spool, in order.

    While a batch is being written, rows go on gathering, past ``batch_rows``, and go out
    together as the next batch once it is done (group commit): when the server is the
    slower side the batches grow. ``add`` never waits for the database: once
    ``max_waiting_batches`` batches' worth of rows are held the writer is ``full``, and its
    owner takes no more records until it is not (the receive loop leaves them with the core,
    which holds them until acknowledged; a caller with nothing else to do calls ``wait_for_room``).
    The spool's replay is written on the same thread, a batch at a time, so a database that is
    back after an outage never holds up the receive loop either.

    A batch refused for the data of a row goes to the spool like any other, and its replay
    sets the refused rows aside (quarantine.py); a refusal that is not a row's (the frames
    table of another model, no permission) stops the writer (``fatal``), its rows spooled.
    """

    def __init__(
        self,
        db: Database,
        spool: Spool,
        *,
        run_id: int,
        batch_rows: int = 500,
        flush_s: float = 0.5,
        retry_max: float = 10.0,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        max_waiting_batches: int = DB_MAX_WAITING_BATCHES,
        on_durable: Callable[[list[FrameRow]], None] = lambda rows: None,
        warn_after: float = WRITE_WARN_S,
        give_up_after: float | None = None,
    ):
        self.db, self.spool, self.run_id = db, spool, run_id
        self.on_durable = on_durable
        self.quarantine = Quarantine(spool.path.parent)
        self.max_pending = batch_rows * max_waiting_batches
        self._executor = executor
        self._inflight: tuple[Future, list[FrameRow]] | None = None
        # The batch being written is the spool's, up to this offset (and how many records): committed once written.
        self._replaying: tuple[int, int] | None = None
        self._replayed = 0  # rows replayed since the database came back
        # A batch that takes too long: said after warn_after, its connection cut after give_up_after.
        self.warn_after, self.give_up_after = warn_after, give_up_after
        self._inflight_since = self._watched_at = 0.0
        self._said_slow = self._cut = False
        self.slow_writes = 0  # batches said to be slow
        self.writes_cut = 0  # batches given up on (their connection cut)
        self.batch_rows, self.flush_s, self.retry_max = batch_rows, flush_s, retry_max
        self.clock = clock
        self.pending: list[FrameRow] = []
        self._oldest: float | None = None
        self.written: Counter = Counter()  # rows inserted, per stream
        self.model: tuple[str, int] | None = None
        self._model_stored = False
        self.backoff = Backoff(0.5, retry_max)  # failing: the database is away
        self.retry_at = 0.0
        self.outages = 0
        self.commits = 0  # batches written (spool replays included)
        self.fatal: DatabaseRefused | None = None
        self.unsaved: list[FrameRow] = []  # rows neither the database nor the spool took (a full disk)
        self.disk_error: str | None = None  # why the spool cannot be written, while it cannot
        self.observe_write: Callable[[int, float], None] = lambda rows, seconds: None  # each batch (metrics)
        self.pace: float | None = None  # rows a second the database has been writing (None: none written yet)
        # Events of no frame (a stream that went down): written between batches, kept until they are.
        self.pending_events: list[tuple] = []
        self._events_inflight: tuple[Future, list[tuple]] | None = None

    @property
    def quarantined(self) -> int:
        """Rows the database refused for good, set aside in db_quarantine.msgpack."""
        return self.quarantine.count

    @property
    def spooled(self) -> int:
        """Rows in the spool, not yet in the database."""
        return self.spool.appended - self.spool.committed

    def set_model(self, model: str, dim: int) -> None:
        """The run's model; frames is created for its D before the first row is written."""
        self.model = (model, dim)

    def add(self, row: FrameRow) -> None:
        """A row to write; never waits for the database (``full`` says when to stop adding)."""
        self.pending.append(row)
        if self._oldest is None:
            self._oldest = self.clock()
        if len(self.pending) >= self.batch_rows and (
            self._writer_free() or self.spool.pending or self.fatal is not None
        ):
            self._hand_on()

    @property
    def full(self) -> bool:
        """As many rows wait as the writer holds (``max_waiting_batches`` batches' worth): add no more
        until a batch is written, or the rows have gone to the spool."""
        return len(self.pending) + len(self.unsaved) >= self.max_pending

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the batch being written to finish (at once if none is)."""
        if self._inflight is not None:
            wait([self._inflight[0]], timeout=timeout)

    def wait_for_room(self) -> None:
        """Until the writer is not ``full``: for a caller that has nothing else to do meanwhile."""
        while self.full and self.fatal is None:
            self.wait(WATCH_STEP_S)
            self.tick()
            if self.full and self._inflight is None:
                time.sleep(min(WATCH_STEP_S, max(0.0, self.retry_at - self.clock())))  # a full disk: retried

    def add_event(self, stream: str, seq: int, t: float, kind: str, value: float | None) -> None:
        """An events row of no frame row, written at the next tick the database takes it."""
        self.pending_events.append((self.run_id, stream, seq, datetime.fromtimestamp(t, UTC), kind, value))

    def _events(self, *, block: bool = False) -> None:
        """Settle the events being written (back to pending if they failed); send the next ones."""
        if self._events_inflight is not None and (block or self._events_inflight[0].done()):
            future, events = self._events_inflight
            self._events_inflight = None
            try:
                future.result()
            except (DatabaseUnavailable, DatabaseRefused) as exc:
                self.pending_events[:0] = events  # tried again once the database is back
                log.warning("could not write %d event(s) yet: %s", len(events), exc)
        if self.pending_events and self._events_inflight is None and not self.spool.pending and self.fatal is None:
            events, self.pending_events = self.pending_events, []
            self._events_inflight = (self._executor.submit(self.db.write_events, events), events)

    def tick(self) -> None:
        """Settle the batch written, if done; hand on what is due: a batch to the database, rows to the
        spool while it holds rows (behind them: order kept), the spool's next batch when it is time."""
        self._collect(block=False)
        self._events()
        now = self.clock()
        if self.unsaved and now >= self.retry_at:  # rows a full disk kept from the spool: in front, again
            self.pending[:0], self.unsaved = self.unsaved, []
            self._oldest = self._oldest or now
        due = self.pending and (len(self.pending) >= self.batch_rows or now - (self._oldest or now) >= self.flush_s)
        if due and (self._inflight is None or self.spool.pending or self.fatal is not None):
            self._hand_on()
        if self._inflight is None and self.spool.pending and now >= self.retry_at and self.fatal is None:
            self._replay()

    def _writer_free(self) -> bool:
        """No batch being written any more (its outcome taken, if it had one)."""
        self._collect(block=False)
        return self._inflight is None

    def flush(self) -> None:
        """Every row waiting, handed on now, after the batch being written (waited for): for callers that have
        nothing else to do."""
        self._collect(block=True)
        self._hand_on()

    def _hand_on(self) -> None:
        """The rows waiting: to the spool while it holds rows (or the database refuses them all), else as
        the next batch to the database (the writer is free: the caller made sure)."""
        if self.spool.pending or self.fatal is not None:
            rows, self.pending, self._oldest = self.pending, [], None
            self._to_spool(rows)
            return
        # One batch must stay well within the statement timeout (batch_cap). The rest go as the next one.
        cap = self.batch_cap()
        rows, self.pending = self.pending[:cap], self.pending[cap:]
        self._oldest = self.clock() if self.pending else None
        if rows:
            self._submit(self._write, rows)

    def batch_cap(self) -> int:
        """Rows in the next batch at most: max_pending (rows let go at once, behind a snapshot's picture,
        can be more than that), and no more than the database has been writing in PACE_SHARE of
        warn_after, but never fewer than batch_rows."""
        if self.pace is None:
            return self.max_pending
        return max(self.batch_rows, min(self.max_pending, int(self.pace * self.warn_after * PACE_SHARE)))

    def _timed_write(self, write: Callable[[list[FrameRow]], Counter], rows: list[FrameRow]) -> Counter:
        """``write(rows)``, its time observed (metrics) and taken into the pace (on the writer's thread)."""
        started = time.perf_counter()
        written = write(rows)
        seconds = time.perf_counter() - started
        self.observe_write(len(rows), seconds)
        if seconds > 0:
            rate = len(rows) / seconds
            self.pace = rate if self.pace is None else PACE_WEIGHT * rate + (1 - PACE_WEIGHT) * self.pace
        return written

    def _submit(self, write: Callable[[list[FrameRow]], Counter], rows: list[FrameRow]) -> None:
        self._inflight = (self._executor.submit(write, rows), rows)
        self._inflight_since = self._watched_at = self.clock()
        self._said_slow, self._cut = False, False
        self._collect(block=False)  # settled at once if it is done already (Inline)

    def _collect(self, *, block: bool) -> None:
        """Take the outcome of the batch being written (waiting for it if ``block``, as long as
        ``give_up_after`` allows); one that takes too long is said, then cut (``_watch``)."""
        if self._inflight is None:
            return
        future, rows = self._inflight
        while block and not future.done():
            wait([future], timeout=min(WATCH_STEP_S, self._next_watch()))
            self._watch()
        if not future.done():
            self._watch()
            return
        self._inflight = None
        replaying, self._replaying = self._replaying, None
        if replaying is not None:
            self._settle_replay(*replaying, future.result)
        else:
            self._settle(rows, future.result)

    def _next_watch(self) -> float:
        """Seconds until the batch being written is due to be said or cut; WATCH_STEP_S when nothing more is."""
        due = [] if self._said_slow else [self.warn_after]
        if self.give_up_after is not None and not self._cut:
            due.append(self.give_up_after)
        if not due:
            return WATCH_STEP_S
        return max(0.0, min(due) - (self.clock() - self._inflight_since)) + 0.01

    def _watch(self) -> None:
        """The batch being written has taken long: said once (warn_after), then cut (give_up_after)."""
        if self._inflight is None:
            return
        now = self.clock()
        if now - self._watched_at > PAUSE_S:  # this process was paused: the batch could not go on either
            self._inflight_since += now - self._watched_at - PAUSE_S
        self._watched_at = now
        running, rows = now - self._inflight_since, len(self._inflight[1])
        if running >= self.warn_after and not self._said_slow:
            self._said_slow = True
            self.slow_writes += 1
            log.warning(
                "a batch of %d rows has been writing to the database (%s) for %.0f s and has not finished: a table "
                "locked, a server hung? Rows wait in memory meanwhile (up to %d)%s",
                rows,
                self.db.target,
                running,
                self.max_pending,
                f"; given up at {self.give_up_after:g} s" if self.give_up_after is not None else "",
            )
        if self.give_up_after is not None and running >= self.give_up_after and not self._cut:
            self._cut = True
            self.writes_cut += 1
            log.warning(
                "the batch of %d rows has been writing for %.0f s, past the statement timeout: the database does "
                "not answer. Its connection is cut; the rows go to %s and are written once it answers",
                rows,
                running,
                self.spool.path,
            )
            self.db.abort()

    def _settle(self, rows: list[FrameRow], write: Callable[[], Counter]) -> None:
        """Count a batch as written, or keep it in the spool whatever went wrong."""
        try:
            self.written.update(write())
            self.commits += 1
        except DatabaseUnavailable as exc:
            self._outage(exc)
            self._to_spool(rows)
            return
        except RowsRefused:
            self._to_spool(rows)  # its replay, next tick, finds the refused rows and sets them aside
            self.retry_at = self.clock()
            return
        except DatabaseRefused as exc:
            self._fail(exc)
            self._to_spool(rows)
            return
        except Exception:
            self._to_spool(rows)
            raise
        self.on_durable(rows)

    def close(self, wait_s: float) -> bool:
        """Write everything held, trying for up to ``wait_s`` while the database is away.

        True when every row is in the database; False leaves the rest in the spool file.
        """
        deadline = self.clock() + wait_s
        tried = False  # the spool: tried once at least, then every half second until the deadline
        while True:
            self._collect(block=True)
            if self.pending:
                self._hand_on()
            elif self.spool.pending and self.fatal is None and (not tried or self.clock() < deadline):
                if tried:  # after a failed try, the next one within half a second whatever the backoff says
                    time.sleep(max(0.0, min(0.5, self.retry_at - self.clock(), deadline - self.clock())))
                tried = True
                self._replay()
            else:
                break
        self._events()
        self._events(block=True)
        if self.unsaved:  # a last try to keep them on disk; if it fails they stay unacknowledged
            rows, self.unsaved = self.unsaved, []
            self._to_spool(rows)
        done = not self.spool.pending and not self.unsaved
        self.spool.close()
        self._executor.shutdown()
        return done

    # -- internals -----------------------------------------------------------------
    def _prepare(self, rows: list[FrameRow]) -> None:
        """The frames table for the run's model, and the model in the run's row, before the first rows."""
        if self.model is not None and not self._model_stored:
            model, dim = self.model
            self.db.ensure_frames(dim)
            self.db.update_run(self.run_id, model=model, dim=dim)
            self._model_stored = True
        elif self.db.dim is None and rows:
            self.db.ensure_frames(int(rows[0].embedding.size))

    def _write(self, rows: list[FrameRow]) -> Counter:
        """Write one batch; the rows inserted, per stream. RowsRefused when a row's data was refused."""
        self._prepare(rows)
        if not rows:
            return Counter()
        try:
            return self._timed_write(self.db.write_rows, rows)
        except (DatabaseRefused, *ENCODING_ERRORS) as exc:
            if row_refusal(exc):
                raise RowsRefused(str(exc)) from exc
            raise

    def _to_spool(self, rows: list[FrameRow]) -> None:
        try:
            self.spool.append(to_spool(r) for r in rows)  # synced to disk before it returns
        except OSError as exc:
            # Neither in the database nor on disk (a full disk): not durable, so not acknowledged;
            # the core holds the records, and these rows are tried again after a while.
            self.unsaved.extend(rows)
            if self.disk_error is None:
                self.disk_error = disk_problem(exc, self.spool.path)
                log.error("cannot keep %d rows: %s; they wait, not acknowledged, until there is room",
                          len(rows), self.disk_error)  # fmt: skip
            self.retry_at = self.clock() + max(1.0, self.backoff.last)
            return
        if self.disk_error is not None:
            log.info("%s takes rows again", self.spool.path)
            self.disk_error = None
        self.on_durable(rows)

    def _replay(self) -> None:
        """The spool's next batch to the database, on the writer's thread; committed from the spool once written."""
        records, end = self.spool.read_batch(self.batch_rows)
        rows = decode_spooled(records, self.spool.path, self.quarantine)
        self._replaying = (end, len(records))
        self._submit(self._write_replayed, rows)

    def _write_replayed(self, rows: list[FrameRow]) -> Counter:
        """Write a batch read back from the spool; rows the database refuses for their data set aside."""
        self._prepare(rows)
        return self._timed_write(lambda batch: write_isolating(self.db.write_rows, batch, self.quarantine), rows)

    def _settle_replay(self, end: int, records: int, write: Callable[[], Counter]) -> None:
        """A batch of the spool written (committed from it), or kept in it for the next try."""
        try:
            self.written.update(write())
        except DatabaseUnavailable as exc:
            self._outage(exc)
            return
        except DatabaseRefused as exc:
            self._fail(exc)
            return
        self.commits += 1
        self.spool.commit(end, records)
        self._replayed += records
        self.retry_at = self.clock()  # the next batch follows at once
        if not self.spool.pending:
            log.info("database is back: replayed %d spooled rows, spool deleted", self._replayed)
            self._replayed = 0
            self.backoff.reset()

    def _outage(self, exc: DatabaseUnavailable) -> None:
        first = not self.backoff.failing
        delay = self.backoff.next()
        self.retry_at = self.clock() + delay
        if first:
            self.outages += 1
            log.warning("database unavailable (%s); keeping rows in %s, retrying with backoff", exc, self.spool.path)
        else:
            log.info("database still unavailable; next try in %.1f s (%d rows spooled)", delay, self.spooled)

    def _fail(self, exc: DatabaseRefused) -> None:
        if self.fatal is None:
            log.error("%s", exc)
        self.fatal = exc


def decode_spooled(records: list, path: Path, quarantine: Quarantine | None = None) -> list[FrameRow]:
    """Spooled records back to rows; one that does not read as a row is set aside (or logged) and left out."""
    rows = []
    for record in records:
        try:
            rows.append(from_spool(record))
        except (ValueError, TypeError) as exc:
            if quarantine is not None:
                quarantine.add(record, f"an unreadable spooled row: {exc}")
            else:
                log.error("%s: skipped an unreadable spooled row: %s", path, exc)
    return rows
