"""What the recorder does with each message, without sockets: files per stream, rows for the database.

Where a stream's files go:

- ``stream_dirs``: every stream in ``<run>/<stream>/``;
- otherwise the first stream seen writes in the run folder itself (the seed's layout) and
  any other stream in its own ``<run>/<stream>/``, so no file ever mixes two streams.

Every record is checked before anything is written of it (its stream's name, its
embedding's size against the run's model, finite values): one that fails is counted and
written nowhere. Each frame is recorded once, in the files as in the database: a record
sent again (the core resends what was not acknowledged after any break) is only
acknowledged again. What each record owes the core is kept by ``acks`` (acks.py).

A resumed run (``resume``) has its streams' files rewritten from its rows first, and goes on
from them: the seq each stream stored last, its summary, its snapshot interval, its segment.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from encoders.shared.complaints import Complaints
from encoders.shared.masking import mask
from encoders.shared.messages import (
    STREAM_NAME,
    EndOfStream,
    Frame,
    Message,
    MetricsRecord,
    NoPictures,
    StreamStart,
    WantPictures,
)
from encoders.shared.silence import SilentStreams
from encoders.shared.storage.frames import FrameRow, StoredRow
from encoders.shared.storage.runs import StoredStream

from .acks import AckTracker
from .config import RecorderConfig
from .keyframes import Segmenter
from .notify import Notice, NoticeSink
from .rows import build_row
from .run import RecordedRun
from .runfiles import EMBEDDINGS_DIR, SNAPSHOTS_DIR
from .snapshots import Want
from .stream_files import StreamFiles
from .summary import COUNT_KEYS
from .thumbnails import wanted

log = logging.getLogger(__name__)
complain = Complaints(log, "the recorder's counters")  # bad input: logged once, then counted

# A second stream's folder sits beside the first stream's own folders; never in them.
RESERVED_FOLDERS = {EMBEDDINGS_DIR, SNAPSHOTS_DIR, ".", ".."}


class RowSink(Protocol):
    def add(self, row: FrameRow) -> None: ...

    def add_event(self, stream: str, seq: int, t: float, kind: str, value: float | None) -> None: ...

    def set_model(self, model: str, dim: int) -> None: ...


class StoredRows(Protocol):
    """Where a resumed run's rows are read back from (storage.connection.Database is one)."""

    def each_stored_row(self, run_id: int, stream: str, take: Callable[[list[StoredRow]], None]) -> int: ...


class Recorder:
    def __init__(
        self,
        run: RecordedRun,
        rows: RowSink,
        settings: RecorderConfig | None = None,
        acks: AckTracker | None = None,
    ):
        self.run = run
        self.root = run.dir
        self.rows = rows
        self.settings = settings or RecorderConfig()
        self.acks = acks if acks is not None else AckTracker()
        self.streams: dict[str, StreamFiles] = {}
        self.ended: set[str] = set()  # streams whose end came
        self.model: tuple[str, int] | None = None
        self.core = ""  # the life of the core the session is in: for records and ends that do not say
        self.counters: Counter = Counter()
        # Per stream, the rows waiting for a snapshot's picture, in seq order: the first waits for its
        # picture, the others behind it (below, "Snapshots").
        self._held: dict[str, deque[FrameRow]] = {}
        self._last_seq: dict[str, int] = {}
        self.notify: NoticeSink = lambda notice: None  # alerts to MQTT and webhooks (notify.py), when set
        self.silent = SilentStreams(self.settings.stream_down_after)  # streams to tell down (check_streams)

    # -- messages ------------------------------------------------------------------
    def on_message(self, msg: Message) -> None:
        if isinstance(msg, Frame):
            self.on_frame(msg)
        elif isinstance(msg, NoPictures):
            self.on_no_pictures(msg)
        elif isinstance(msg, MetricsRecord):
            self.on_record(msg)
        elif isinstance(msg, EndOfStream):
            self.on_end(msg)
        elif isinstance(msg, StreamStart):
            self.on_start(msg)
        else:
            self.counters["ignored_messages"] += 1

    def on_start(self, start: StreamStart) -> None:
        if not STREAM_NAME.fullmatch(start.stream):
            self.counters["bad_stream_names"] += 1
            return
        files = self.streams.get(start.stream) or self._open_stream(start.stream)
        files.summary.start(start.first_seq, self.core, start.previous_core, start.previous_sent)
        self.notify(Notice("online", start.stream, time.time(), start.first_seq, run=self.run.name))
        log.info(
            "stream %s starts at seq %d (%s)%s",
            start.stream,
            start.first_seq,
            mask(start.url),
            f"; its ingest had sent {start.previous_sent} captures to the core's life {start.previous_core}"
            if start.previous_core
            else "",
        )

    def on_frame(self, frame: Frame) -> None:
        """A picture this recorder asked for (WantPictures): its snapshot written, its row let go."""
        self.counters["frames"] += 1
        files = self.streams.get(frame.stream)
        want = files.wants.take(frame.seq) if files is not None else None
        if files is None or want is None:
            self.counters["pictures_unwanted"] += 1  # given up already, or never asked for: dropped
            return
        try:
            if not frame.jpeg:
                raise OSError("its picture came empty")
            snap, scene_snap = files.write_snapshot(want, frame.jpeg)
        except OSError as exc:
            complain("snapshots_unwritten", "%s seq %d: no snapshot written: %s", frame.stream, frame.seq, exc)
            self._missed(files, want)
        else:
            held = self._held.get(frame.stream) or deque()
            for i, row in enumerate(held):
                if row.seq == want.seq:
                    held[i] = row._replace(snapshot_path=snap, scene_snapshot_path=scene_snap)
                    break
        self._release(frame.stream)

    def on_no_pictures(self, msg: NoPictures) -> None:
        """Pictures asked for that will not come (the ingest no longer has them, or is gone): those
        snapshots missed now, not after ``snapshot_wait``; the rows behind them go on."""
        files = self.streams.get(msg.stream)
        if files is None:
            return
        wants = [w for w in map(files.wants.take, msg.seqs()) if w is not None]
        self.counters["pictures_gone"] += len(wants)
        self._miss(msg.stream, files, wants)

    def on_record(self, rec: MetricsRecord) -> None:
        last = self._last_seq.get(rec.stream)
        if last is not None and rec.seq <= last:
            # Records come in seq order, so this one was sent before (the core resends what it has
            # no acknowledgement of): acknowledged again, recorded once, in the files as in the database.
            self.counters["repeated_records"] += 1
            self.acks.repeated(rec.stream, rec.seq)
            known = self.streams.get(rec.stream)
            if known is not None and known.summary.counts_from(rec, self.core):  # stored, its counts were not
                self.acks.note_lives(rec.stream, known.summary.lives_snapshot())
            return
        norm_sq = self._acceptable(rec)
        if norm_sq is None:
            if STREAM_NAME.fullmatch(rec.stream):
                self._last_seq[rec.stream] = rec.seq
                # Counted in summary.json as not stored, never as embedded.
                files = self.streams.get(rec.stream) or self._open_stream(rec.stream)
                files.summary.not_stored(rec, self.core)
                self.acks.refused(rec.stream, rec.seq, files.summary.lives_snapshot())
            return
        self._last_seq[rec.stream] = rec.seq
        self.counters["records"] += 1
        files = self.streams.get(rec.stream) or self._open_stream(rec.stream)
        missed = files.snapshots_missed
        want = files.on_record(rec, time.monotonic(), self.core)
        self.counters["snapshots_missed"] += files.snapshots_missed - missed
        keyframe, keyframe_seq = files.segmenter.assign(
            rec.seq, rec.t_capture, rec.vector, scene_change=rec.scene_change, norm_sq=norm_sq
        )
        if rec.scene_change:
            self.counters["scene_changes"] += 1
        thumbnail = None
        # A frame that set off an alert keeps its picture, keyframe or not: the alert shows it.
        if wanted(self.settings.thumbnails, keyframe) or (rec.events and self.settings.thumbnails != "none"):
            if rec.thumbnail:
                thumbnail = rec.thumbnail
                self.counters["thumbnails"] += 1
            else:
                self.counters["thumbnails_missing"] += 1  # the worker made none (a frame it could not shrink)
        row = build_row(self.run.id, rec, keyframe=keyframe, keyframe_seq=keyframe_seq, thumbnail=thumbnail)
        # First: the writer may settle the row before add returns.
        self.acks.expect(rec.stream, rec.seq, files.summary.lives_snapshot())
        held = self._held.get(rec.stream)
        if want is not None or held:
            self._held.setdefault(rec.stream, deque()).append(row)  # its snapshot's picture, or one before it
        else:
            self.rows.add(row)
        self.silent.heard(rec.stream, rec.seq, time.monotonic())
        alerts = {"scene_change": rec.drift} if rec.scene_change else {}
        for kind, value in {**alerts, **rec.events}.items():
            self.notify(Notice(kind, rec.stream, rec.t_capture, rec.seq, value, self.run.name, rec.thumbnail or None))

    def check_streams(self, now: float) -> None:
        """Tell each stream that has sent no record for stream_down_after seconds, and has not ended, down (once)."""
        for stream, seq, silent_s in self.silent.newly_down(now):
            log.warning("stream %s: no record for %.0f s: down", stream, silent_s)
            self.notify(Notice("stream_down", stream, time.time(), seq, round(silent_s, 3), self.run.name))
            self.rows.add_event(stream, seq, time.time(), "stream_down", round(silent_s, 3))

    # -- snapshots -----------------------------------------------------------------
    #
    # A record due a snapshot asks for its picture (``wanted``, sent by the receiver: one WantPictures
    # per stream per loop turn). Its row waits for it, and the stream's rows after it wait behind it, so
    # that a row names a snapshot only once its file is written, and rows reach the writer in seq order
    # (a resumed run goes on from the highest seq stored: a row stored past one that was still waiting
    # would leave a hole). The wait is bounded: the picture comes within ``snapshot_wait`` or the
    # snapshot is missed (counted) and the row goes without it. Nothing is acknowledged meanwhile (its
    # ack entry waits, acks.py), so the core still holds every waiting record: a crash, or a database
    # outage after, loses nothing. Memory: a stream's wants are at most WANTS_MAX; the rows behind them
    # are those that arrive within ``snapshot_wait``, which the core's window (records sent and not
    # acknowledged) bounds.

    def wanted(self) -> list[WantPictures]:
        """The pictures asked for since the last call: one WantPictures per stream."""
        out = []
        for stream, files in self.streams.items():
            seqs = files.wants.to_send()
            if seqs:
                out.append(WantPictures.of(stream, seqs))
        return out

    def expire(self, now: float) -> None:
        """The snapshots whose picture has not come in time: missed; their rows go without them."""
        for stream, files in self.streams.items():
            self._miss(stream, files, files.wants.expired(now))

    def waiting_pictures(self) -> int:
        """Pictures asked for and not yet come."""
        return sum(len(files.wants) for files in self.streams.values())

    def give_up_pictures(self) -> None:
        """Every picture still awaited, missed: every row held goes to the writer (the run ends)."""
        self.expire(math.inf)

    def _missed(self, files: StreamFiles, want: Want) -> None:
        files.missed(want)
        self.counters["snapshots_missed"] += 1

    def _miss(self, stream: str, files: StreamFiles, wants: list[Want]) -> None:
        """These snapshots missed (their pictures will not come); the stream's rows behind them go on."""
        for want in wants:
            self._missed(files, want)
        if wants:
            self._release(stream)

    def _release(self, stream: str) -> None:
        """The stream's rows that wait for no picture any more, to the writer, in order."""
        held = self._held.get(stream)
        files = self.streams[stream]
        while held and not files.wants.waiting(held[0].seq):
            self.rows.add(held.popleft())
        if held is not None and not held:
            del self._held[stream]

    def on_end(self, eos: EndOfStream) -> None:
        files = self.streams.get(eos.stream)
        if files is None:
            if not STREAM_NAME.fullmatch(eos.stream):
                self.counters["bad_stream_names"] += 1
                return
            files = self._open_stream(eos.stream)  # a stream that ended before any frame was embedded
        files.summary.end(dict(eos.counts), self.core, eos.last_seq)
        self.ended.add(eos.stream)
        self.silent.ended(eos.stream)
        self.notify(Notice("offline", eos.stream, time.time(), eos.last_seq, run=self.run.name))
        self.acks.ended(eos.stream, eos.last_seq, files.summary.lives_snapshot())
        log.info(
            "stream %s ended at seq %d: %s",
            eos.stream,
            eos.last_seq,
            ", ".join(f"{k} {eos.counts.get(k)}" for k in COUNT_KEYS if k in eos.counts),
        )

    # -- periodic and final --------------------------------------------------------
    def flush_files(self) -> None:
        for files in self.streams.values():
            files.csv.flush()

    def close_files(self) -> None:
        self.give_up_pictures()
        if not self.streams and not self.settings.stream_dirs:
            # Nothing arrived: still leave the seed's layout, empty, in the run folder.
            StreamFiles(
                None,
                self.root,
                self.root,
                snapshot_interval=self.settings.snapshot_interval,
                embedding_interval=self.settings.embedding_interval,
            ).close()
        for name, files in self.streams.items():
            try:
                files.close()
            except OSError as exc:
                log.error("%s: could not finish its files in %s: %s", name, files.folder, exc)

    def stream_summaries(self, db_rows: Counter) -> dict[str, dict[str, Any]]:
        """Each stream's summary, with the rows the database took of it."""
        return {name: files.summary_dict(db_rows.get(name, 0)) for name, files in self.streams.items()}

    # -- a resumed run -------------------------------------------------------------
    def resume(
        self, source: StoredRows, stored: dict[str, StoredStream], progress: Callable[[], None] = lambda: None
    ) -> None:
        """Rewrite the run's files from its rows (a recorder killed mid-run leaves more or fewer lines
        than rows), and go on from them. ``progress`` is called now and then (heartbeats)."""
        model = self.run.config.get("model")
        if isinstance(model, dict) and model.get("dim"):
            self.model = (str(model.get("name")), int(model["dim"]))
        folders: dict[str, Path | None] = {**self.run.stream_folders}
        folders.update({name: None for name in stored if name not in folders})
        previous = self.run.previous_summary or {}
        before = previous.get("streams") or {}

        def take(files: StreamFiles, rows: list[StoredRow]) -> None:
            for row in rows:
                files.restore(row)
            progress()

        for name, folder in folders.items():
            if folder is not None:
                StreamFiles.clear(folder, stored[name].last_seq if name in stored else -1)
            files = self._open_stream(name, folder)
            n = source.each_stored_row(self.run.id, name, functools.partial(take, files))
            files.csv.flush()
            if self.model is not None:
                files.summary.model, files.summary.dim = self.model
            prev = before.get(name) or {}
            # The counts saved with the last acknowledgements agree with the rows; summary.json's
            # may be seconds older (it is written now and then).
            durable = (self.run.durable_lives or {}).get(name)
            files.summary.restore_counts(durable if durable is not None else prev.get("lives"), bool(prev.get("ended")))
            self.acks.note_lives(name, files.summary.lives_snapshot())
            if name in stored:
                self._last_seq[name] = stored[name].last_seq
                self.acks.resume(name, stored[name].last_seq)
            log.info("stream %s: %d rows stored, files rewritten from them in %s", name, n, files.folder)
        messages = (previous.get("run") or {}).get("messages") or {}
        self.counters.update({k: v for k, v in messages.items() if isinstance(v, int)})

    # -- internals -----------------------------------------------------------------
    def _acceptable(self, rec: MetricsRecord) -> float | None:
        """The embedding's squared length if the record can be recorded; None (counted) if not."""
        if rec.stream not in self.streams and not STREAM_NAME.fullmatch(rec.stream):
            self.counters["bad_stream_names"] += 1
            log.warning(
                "dropped a record of stream %r: a stream name is 1-64 letters, digits, '_', '.', '-'", rec.stream[:80]
            )
            return None
        dim = int(rec.vector.size)
        if self.model is None:
            if dim == 0:
                self.counters["bad_vectors"] += 1
                return None
            self.model = (rec.model, dim)
            self.rows.set_model(rec.model, dim)
            self.run.set_model(rec.model, dim)
        elif dim != self.model[1]:
            self.counters["wrong_dim"] += 1
            if self.counters["wrong_dim"] == 1:
                log.error(
                    "dropped a %s record of %d dimensions: this run records %s, %d dimensions",
                    rec.model,
                    dim,
                    *self.model,
                )
            return None
        norm_sq = float(np.dot(rec.vector, rec.vector))  # any NaN or inf makes it so; one pass
        if not math.isfinite(norm_sq):
            self.counters["bad_vectors"] += 1
            complain("bad_vectors", "%s seq %d: dropped a record whose embedding is not finite", rec.stream, rec.seq)
            return None
        return norm_sq

    def _open_stream(self, stream: str, folder: Path | None = None) -> StreamFiles:
        if folder is not None:
            pass
        elif not self.settings.stream_dirs and not self.streams:
            folder = self.root
        else:
            folder = self.root / (stream if stream not in RESERVED_FOLDERS else f"stream_{stream}")
        files = StreamFiles(
            stream,
            folder,
            self.root,
            snapshot_interval=self.settings.snapshot_interval,
            embedding_interval=self.settings.embedding_interval,
            snapshot_wait=self.settings.snapshot_wait,
            segmenter=Segmenter(self.settings.keyframe_drift, self.settings.keyframe_max_s),
        )
        self.streams[stream] = files
        log.info("stream %s: files in %s", stream, folder)
        self.run.add_stream(stream, folder)
        return files
