"""Every message that crosses a ZeroMQ socket in this project, defined once.

(More than 350 lines on purpose: the whole wire format, every message and its encoding, is
read in one file. docs/PROTOCOL.md says who sends which, when.)

A message travels as a multipart ZeroMQ message:

    [topic]  header  [buffer ...]

- ``topic`` is present only on PUB/SUB sockets (``kind/stream`` as bytes), so that a
  subscriber filters by kind and stream without decoding anything.
- ``header`` is a msgpack map: ``v`` (schema version), ``k`` (kind) and the message's
  plain fields.
- Binary payloads (the JPEG bytes, the float32 embedding) travel as their own parts,
  unchanged: never copied into the header, never pickled.

``decode`` trusts nothing: a wrong version, an unknown kind, a missing field, a field of
the wrong type or out of its bounds, a vector of the wrong size or with a NaN or an infinity
raises ``DecodeError``, which services count and drop. A message that decodes is safe to
use: every field is what its annotation says (checked by ``validation``, from the
annotations below, worked out once per class), so no consumer needs to look again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import re
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal, Self, TypedDict, cast

import msgpack
import numpy as np

from .validation import (
    Check,
    Invalid,
    Matches,
    MaxItems,
    MaxLen,
    Packed,
    Range,
    checker,
    map_header,
    packed,
    packed_str,
    show,
)

# 2: sessions with the core (docs/PROTOCOL.md). Protocol 3 adds kinds (Results, Records, Acks)
# and takes three off the wire (Embedding, Skipped, Ack); every kind both share is unchanged,
# so the schema stays 2: a Hello of protocol 2 still decodes, and is refused by its protocol
# (shared/session.py hello_problem) with a reason the peer logs, not dropped as bad bytes; and
# a record spooled by a core of protocol 2 (delivery.py, left_records.py) still decodes.
SCHEMA_VERSION = 2
PROTOCOL = 3  # 3: batches on the links that carry no pixels, pictures beside the core (docs/PROTOCOL.md, "Protocol 3")
# A stream's name: it names folders and database rows, so only these characters.
STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# -- what a field may hold ---------------------------------------------------------------
# Bounds of the values every consumer relies on, as Annotated markers that validation
# reads; to mypy each is its plain type. Every float is finite wherever it is declared.

INT64_MAX = 2**63 - 1
# Sequence numbers and counts are stored as Postgres bigint. A seq stays one below the
# largest, so that "last seq + 1" (the frames a stream published) is still a count.
Seq = Annotated[int, Range(0, INT64_MAX - 1)]
Count = Annotated[int, Range(0, INT64_MAX)]
StreamName = Annotated[str, MaxLen(64), Matches(STREAM_NAME, "a stream name (1-64 of A-Z a-z 0-9 _ . -)")]
# Names of things (a worker, a model, a service, a counter) and free text (a reason, a URL):
# bounded so that one message cannot fill a log line, a page or a database row.
Name = Annotated[str, MaxLen(1024)]
MAX_DIM = 65536  # an embedding's length at most (CLIP's are 512 to 1024)
TEXT_MAX = 4096
Text = Annotated[str, MaxLen(TEXT_MAX)]
Pixels = Annotated[int, Range(1, 65535)]  # a JPEG's width or height: the format's own limit
PerSecond = Annotated[float, Range(0, None)]
# A moment, in seconds since 1970 (UTC): within the dates a summary, a drift.csv line or a
# database timestamp can show (up to the end of year 9999).
TIME_MAX = 253402300799.0
Time = Annotated[float, Range(0, TIME_MAX)]
Similarity = Annotated[float, Range(-1, 1)]  # a cosine
Drift = Annotated[float, Range(0, 2)]  # 1 - a cosine; also what statistics of drifts are
Level = Annotated[float, Range(0, 255)]  # a picture's brightness or contrast, in 8-bit levels
# What a record's frame set off (metrics/alerts.py): kind -> the value measured, e.g.
# {"frozen": 61.0} (seconds without change) or {"blackout": 2.1} (the picture's contrast).
EVENT_KIND = re.compile(r"[a-z][a-z_]{0,14}(:[A-Za-z0-9_.-]{1,48})?")  # frozen, trigger:door
EventKind = Annotated[str, MaxLen(64), Matches(EVENT_KIND, "an event kind (frozen, blackout, trigger:NAME, ...)")]
Events = Annotated[dict[EventKind, float | None], MaxItems(16)]


class FrameCounts(TypedDict, total=False):
    """A stream's frame counts, as ingest (its end of stream) and metrics (every record and
    its end of stream) total them. A count a sender does not keep is absent; ``published``
    alone may be None: metrics does not know it before ingest's end of stream."""

    published: Count | None
    dispatched: Count  # ingest: sent to an encoder
    embedded: Count
    dropped: Count
    skipped: Count
    lost: Count
    late: Count
    corrupt: Count  # ingest: parts of the camera's stream that were no JPEG
    reconnects: Count
    truncated: Count


class Rolling(TypedDict, total=False):
    """Drift over metrics' rolling window; the statistics are None while it is empty."""

    count: Count
    mean: Drift | None
    std: Drift | None
    min: Drift | None
    max: Drift | None


# A service's counters, published now and then for viewers and logs: any names, numbers only
# (an int within a signed 64-bit one, as Postgres and every consumer take it).
Counters = Annotated[
    dict[Annotated[str, MaxLen(64)], Annotated[int, Range(-INT64_MAX - 1, INT64_MAX)] | float | None],
    MaxItems(256),
]


class DecodeError(ValueError):
    """A message that is not one of ours, or not of this version."""


@dataclass
class Message:
    KIND: ClassVar[str] = ""
    # Names of fields that travel as raw parts after the header, in this order.
    BUFFERS: ClassVar[tuple[str, ...]] = ()

    def topic(self) -> bytes:
        stream = getattr(self, "stream", "")
        return f"{self.KIND}/{stream}".encode()


# -- sessions (docs/PROTOCOL.md): every service's one connection to the core -------------

Role = Literal["ingest", "worker", "recorder", "viewer", "control"]


@dataclass
class Hello(Message):
    """A peer opens its session with the core. The fields after ``protocol`` belong to one role."""

    KIND: ClassVar[str] = "hello"
    role: Role
    name: Name  # for logs: host-pid, a worker's id, a camera's stream
    protocol: Annotated[int, Range(0, 1000)]
    stream: StreamName | None = None  # ingest: its camera's stream
    url: Text = ""  # ingest: the camera (passwords masked)
    lossless: bool = False  # ingest: send captures only against credit
    undelivered: Count = 0  # ingest: captures read while the core was away (counted as dropped)
    sent: Count = 0  # ingest: captures it sent in its previous session, the one core life ``after`` welcomed
    after: Name = ""  # ingest: that life of the core ("" if none): what did not arrive is counted lost
    capacity: Annotated[int, Range(0, 4096)] = 0  # worker: frames it can hold at once
    model: Name = ""  # worker: what it embeds with, e.g. "ViT-B-32/openai"
    dim: Annotated[int, Range(0, MAX_DIM)] = 0  # worker: the length of its embeddings (512 for ViT-B-32)
    # worker: its data socket (docs/PROTOCOL.md, "Protocol 3"), as bound: the core names it to the ingests
    # on the host it sees the worker's connection from, unless ``advertised`` (ENCODERS_DATA_ADVERTISE)
    data: Annotated[str, MaxLen(256)] = ""
    advertised: bool = False
    run: Name = ""  # recorder: the run it records already (after a core restart), if any
    takeover: bool = False  # recorder: replace the recorder the core has, if any


@dataclass
class Welcome(Message):
    """The core takes the session. ``core`` names this life of the core (a restart gives a new one)."""

    KIND: ClassVar[str] = "welcome"
    core: Name
    heartbeat_s: Annotated[float, Range(0.01, 3600)]
    misses: Annotated[int, Range(1, 1000)]
    credit: Count = 0  # lossless ingest: captures it may send now
    run: Name = ""  # recorder: the run the core's last recorder recorded, if any
    frames: Text = ""  # viewer: the frames publisher, as the core bound it
    metrics: Text = ""  # viewer: the metrics publisher


@dataclass
class Refused(Message):
    """The core does not take the session (or a message of a session it does not know)."""

    KIND: ClassVar[str] = "refused"
    reason: Text
    rejoin: bool = False  # the session is unknown (expired, or a restarted core): say Hello again
    retry: bool = False  # refused for now (a limit): try again later


@dataclass
class Heartbeat(Message):
    """Sent when nothing else was for a heartbeat: both sides count silence (docs/PROTOCOL.md)."""

    KIND: ClassVar[str] = "heartbeat"


@dataclass
class Bye(Message):
    """A session ends on purpose (either side)."""

    KIND: ClassVar[str] = "bye"
    reason: Text = ""


@dataclass
class Stop(Message):
    """control -> core: drain the pipeline and stop; core -> a peer: finish what you hold and leave."""

    KIND: ClassVar[str] = "stop"
    reason: Text = ""


@dataclass
class Stopped(Message):
    """core -> control: the pipeline has drained; each stream's totals. The same, on the metrics
    publisher (topic ``stopped/``), tells viewers that the pipeline has stopped: they exit."""

    KIND: ClassVar[str] = "stopped"
    streams: Annotated[dict[StreamName, FrameCounts], MaxItems(4096)] = field(default_factory=dict)


@dataclass
class Draining(Message):
    """core -> control: the drain a Stop began goes on; what it still waits for, in words (the core's
    log line, every few seconds), so that ``encoders stop`` can say why it is taking long."""

    KIND: ClassVar[str] = "draining"
    waiting_for: Text = ""


# -- frames and their outcomes ----------------------------------------------------------


@dataclass
class CaptureEnded(Message):
    """ingest -> core: the camera's stream has ended (no capture follows); the ingest's own counts."""

    KIND: ClassVar[str] = "capture_ended"
    reason: Text = ""
    counts: FrameCounts = field(default_factory=FrameCounts)


@dataclass
class Credit(Message):
    """core -> a lossless ingest: it may send ``n`` more captures."""

    KIND: ClassVar[str] = "credit"
    n: Count


@dataclass
class StreamStart(Message):
    """A stream's epoch starts (an ingest said Hello): numbers go on from ``first_seq``, drift starts afresh."""

    KIND: ClassVar[str] = "start"
    stream: StreamName
    first_seq: Seq
    url: Text = ""
    t: Time = field(default_factory=time.time)
    # The ingest's previous session was with another life of the core (it restarted): the
    # captures it sent there, so that the recorder counts those that life never accounted for.
    previous_core: Name = ""
    previous_sent: Count = 0


@dataclass
class Frame(Message):
    """A frame as the core numbered it: to a worker, and on the frames publisher."""

    KIND: ClassVar[str] = "frame"
    BUFFERS: ClassVar[tuple[str, ...]] = ("jpeg",)
    stream: StreamName
    seq: Seq
    t_capture: Time
    width: Pixels
    height: Pixels
    jpeg: bytes = b""


# Rows of a worker's ``Results`` (below): in-process objects, not messages of their own any more
# (protocol 2 sent one of these per frame; protocol 3 sends a batch's in one Results). They stay
# the core's per-frame outcomes (streams.py, reorder.py) and the worker's per-frame results, so
# that per-frame logic reads as before; ``Results.of``/``rows`` convert, and decode checks every
# field of every row against these annotations' bounds (as columns).


@dataclass
class Skipped:
    """A frame a worker could not embed (a corrupt JPEG, a failed batch): a row of ``Results``."""

    stream: StreamName
    seq: Seq
    worker: Name
    reason: Text


@dataclass
class Embedding:
    """An L2-normalised CLIP embedding of one frame, and a small JPEG of it: a row of ``Results``."""

    stream: StreamName
    seq: Seq
    t_capture: Time
    worker: Name
    model: Name
    t_encoded: Time = field(default_factory=time.time)
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    thumbnail: bytes = b""  # empty: none made
    brightness: Level | None = None  # the picture's mean luma (None: not measured)
    contrast: Level | None = None  # the largest standard deviation of its colour channels: ~0 when uniform


@dataclass
class EndOfStream(Message):
    """No frame of ``stream`` follows ``last_seq``; ``counts`` are its totals. Nothing published: -1."""

    KIND: ClassVar[str] = "eos"
    stream: StreamName
    last_seq: Annotated[int, Range(-1, INT64_MAX - 1)]
    counts: FrameCounts = field(default_factory=FrameCounts)


# -- records and the recorder ------------------------------------------------------------


@dataclass
class MetricsRecord(Message):
    """One embedded frame, in sequence order, with its similarity to the previous one.

    ``similarity`` and ``drift`` are None for the first embedded frame of a stream's epoch.
    ``rolling`` holds mean/std/min/max/count of drift over the rolling window; ``counts``
    the stream's running totals in this life of the core (``core``).
    """

    KIND: ClassVar[str] = "metrics"
    BUFFERS: ClassVar[tuple[str, ...]] = ("vector", "thumbnail")
    stream: StreamName
    seq: Seq
    t_capture: Time
    t_encoded: Time
    worker: Name
    model: Name
    similarity: Similarity | None
    drift: Drift | None
    rolling: Rolling = field(default_factory=Rolling)
    fps: PerSecond = 0.0
    counts: FrameCounts = field(default_factory=FrameCounts)
    scene_change: bool = False
    t_metrics: Time = field(default_factory=time.time)
    core: Name = ""
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    thumbnail: bytes = b""
    brightness: Level | None = None  # as the worker measured the picture
    contrast: Level | None = None
    events: Events = field(default_factory=dict)  # what this frame set off (metrics/alerts.py)


@dataclass
class Ready(Message):
    """recorder -> core: the run it records, and the highest sequence number stored per stream."""

    KIND: ClassVar[str] = "ready"
    run: Name
    stored: Annotated[dict[StreamName, Seq], MaxItems(4096)] = field(default_factory=dict)


@dataclass
class Ack:
    """Every record of ``stream`` up to ``seq`` is durable (and its end, if ``ended``): a row of
    ``Acks`` (the recorder's acks.py makes them, the core's delivery.py applies them)."""

    stream: StreamName
    seq: Annotated[int, Range(-1, INT64_MAX - 1)]
    ended: bool = False


class AckEntry(TypedDict):
    seq: Annotated[int, Range(-1, INT64_MAX - 1)]
    ended: bool


@dataclass
class Acks(Message):
    """recorder -> core: every stream's acknowledgements that became due, in one message."""

    KIND: ClassVar[str] = "acks"
    streams: Annotated[dict[StreamName, AckEntry], MaxItems(4096)] = field(default_factory=dict)

    @classmethod
    def of(cls, acks: Sequence[Ack]) -> Acks:
        """One message of these acks (a stream's last one counts, as the core takes the highest)."""
        return cls({a.stream: AckEntry(seq=a.seq, ended=a.ended) for a in acks})

    def rows(self) -> list[Ack]:
        return [Ack(stream, a["seq"], a["ended"]) for stream, a in self.streams.items()]


# -- batches: rows in columns (docs/PROTOCOL.md, "The messages of protocol 3") ----------------
# A batch travels as a header (its plain fields, with ``n`` rows and the vectors' ``dim``),
# then one part of columns (each column's n values of its dtype, little-endian, one column
# after the other, the widest dtypes first so that each starts aligned: ``packing``), one part
# per blob (the bytes of every row end to end; its column holds each row's length) and one
# part of vectors (rows x dim float32). One part for every column because a part costs about
# as much to send and receive as a small column costs to check: a batch of one record had 27.
# decode checks each part by its length and each column's values in one numpy pass, then what
# ties them together (``Batch._problem``). It still takes a batch of one part per column (what
# a core's spool or a recorder's left records hold from before). The header
# carries no list: sparse per-row data is a map keyed by the row's number in decimal
# (``RowKey``), and names a batch's rows share are a table, name -> number (a u16 column).

MAX_BATCH = 4096  # rows of one batch at most
# Rows of one batch that carry a note in the header (a skipped row's reason, a record's
# events): rare, and bounded so that a header stays within HEADER_MAX_BYTES (64 Texts: 1 MB).
MAX_NOTES = 64
MAX_BATCH_NAMES = 1024  # entries of a batch's table of stream names (a StreamName packs to 259 bytes)
MAX_WORKER_NAMES = 64  # entries of a Records' table of worker names (a Name packs to 4 KB)
BATCH_PART_MAX = 16 * 2**20  # bytes of one part of a batch at most: its vectors, or its thumbnails end to end
ROW_KEY = re.compile(r"0|[1-9][0-9]{0,3}")
RowKey = Annotated[str, MaxLen(4), Matches(ROW_KEY, "a row's number (decimal, no leading zero)")]
Number = Annotated[int, Range(0, 65535)]  # a name's number in a batch's table: what its u16 column holds
EMBEDDED, SKIPPED = 0, 1  # Results' outcome column


@dataclass(frozen=True)
class Column:
    """A column of a batch: ``dtype`` (numpy's, little-endian), every value within [lo, hi]
    (an open end: None), finite where a float; ``nan``: NaN allowed too, meaning None."""

    name: str
    dtype: str
    lo: float | None = None
    hi: float | None = None
    nan: bool = False

    def problem(self, values: np.ndarray) -> str | None:
        """Why these values are not this column's, or None (numpy over the whole column; a short
        one value by value, where numpy's reductions cost more than the checks: a batch of one or
        two records, a camera's frames released as they come, is the common case in real time)."""
        if values.size == 0:
            return None
        if values.size <= SHORT_COLUMN:
            return self._short_problem(values.tolist())
        if values.dtype.kind == "f":
            if self.nan:
                if np.isinf(values).any():
                    return "expected finite values or NaN, got an infinity"
                values = values[~np.isnan(values)]
                if values.size == 0:
                    return None
            elif not np.isfinite(values).all():
                return "expected finite values, got a NaN or an infinity"
        if (self.lo is not None and values.min() < self.lo) or (self.hi is not None and values.max() > self.hi):
            return f"expected values in [{self.lo}, {self.hi}], got {values.min().item()!r} to {values.max().item()!r}"
        return None

    def _short_problem(self, values: list) -> str | None:
        lo, hi = self.lo, self.hi
        for v in values:
            if v != v:  # noqa: PLR0124  # NaN: the one value not equal to itself
                if self.nan:
                    continue
                return "expected finite values, got a NaN or an infinity"
            if v in (math.inf, -math.inf):
                return (
                    "expected finite values or NaN, got an infinity"
                    if self.nan
                    else ("expected finite values, got a NaN or an infinity")
                )
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return f"expected values in [{lo}, {hi}], got {v!r}"
        return None


SHORT_COLUMN = 16  # values at most that Column.problem checks one by one


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _none(values: list[float]) -> list[float | None]:
    return [None if v != v else v for v in values]  # noqa: PLR0124  # NaN: the one value not equal to itself (fast)


@dataclass
class Batch(Message):
    """Rows in columns: see above. ``columns`` by name (each n values of its Column's dtype),
    ``blobs`` by name (the bytes of every row end to end), ``vectors`` (rows x dim float32)."""

    COLUMNS: ClassVar[tuple[Column, ...]] = ()
    BLOBS: ClassVar[tuple[str, ...]] = ()  # each also a column: the rows' lengths (u32)
    # One part a row after the vectors (Pictures' JPEGs: ``jpegs``), each as long as its ``bytes`` column.
    ROW_PARTS: ClassVar[bool] = False
    BUFFERS: ClassVar[tuple[str, ...]] = ("columns", "blobs", "vectors", "jpegs")  # not header fields
    columns: dict[str, np.ndarray] = field(default_factory=dict, kw_only=True)
    blobs: dict[str, bytes] = field(default_factory=dict, kw_only=True)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), kw_only=True)

    @property
    def n(self) -> int:
        """Rows."""
        return len(self.columns[self.COLUMNS[0].name])

    def vector_rows(self) -> int:
        """How many rows have a vector (the vectors part holds that many)."""
        return self.n

    def _problem(self) -> str | None:
        """Why the columns and the header do not agree (checked by decode), or None."""
        return None

    def _blob(self, name: str) -> list[bytes]:
        lengths = self.columns[name].tolist()
        data, out, at = self.blobs[name], [], 0
        for length in lengths:
            out.append(data[at : at + length])
            at += length
        return out


def _table_problem(table: dict[str, int], column: np.ndarray, what: str) -> str | None:
    """A batch's name table numbers its names 0..k-1, and its column holds only those numbers."""
    if sorted(table.values()) != list(range(len(table))):
        return f"its {what} are not numbered 0 to {len(table) - 1}"
    if column.size:
        top = max(column.tolist()) if column.size <= SHORT_COLUMN else int(column.max())  # as Column.problem
        if top >= len(table):
            return f"a row's {what[:-1]} number {top} is not in its table of {len(table)}"
    return None


def _rows_problem(keys: Iterable[str], n: int, what: str) -> str | None:
    for key in keys:
        if int(key) >= n:
            return f"{what} of row {key}, of {n} rows"
    return None


def _runs(rows: Sequence[Any], key: Callable[[Any], Any], name: Callable[[Any], str], names_max: int,
          noted: Callable[[Any], bool], sizes: Callable[[Any], tuple[int, int]]) -> list[list[Any]]:  # fmt: skip
    """``rows`` cut into runs that each fit one batch: rows of one ``key`` (its header), at most
    MAX_BATCH rows, MAX_NOTES noted, ``names_max`` names in its table, and BATCH_PART_MAX bytes
    of vectors and of blobs (``sizes``)."""
    out: list[list[Any]] = []
    run: list[Any] = []
    names: set[str] = set()
    notes = vector_bytes = blob_bytes = 0
    run_key: Any = None
    for row in rows:
        k, nm, nt, (vb, bb) = key(row), name(row), noted(row), sizes(row)
        if run and (
            k != run_key
            or len(run) >= MAX_BATCH
            or notes + nt > MAX_NOTES
            or (nm not in names and len(names) >= names_max)
            or vector_bytes + vb > BATCH_PART_MAX
            or blob_bytes + bb > BATCH_PART_MAX
        ):
            out.append(run)
            run, names, notes, vector_bytes, blob_bytes = [], set(), 0, 0, 0
        run.append(row)
        run_key = k
        names.add(nm)
        notes += nt
        vector_bytes += vb
        blob_bytes += bb
    if run:
        out.append(run)
    return out


@dataclass
class Results(Batch):
    """worker -> core: the outcomes of a batch the worker finished, one row a frame: embedded
    (a vector, its thumbnail, the picture's levels) or skipped (a reason, by row in ``reasons``).

    ``streams`` numbers the batch's stream names (the ``stream`` column holds the numbers);
    ``worker``, ``model`` and ``t_encoded`` are every row's. The vectors part holds the embedded
    rows' vectors, in row order; a skipped row has no thumbnail, levels or capture time (0).
    """

    KIND: ClassVar[str] = "results"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("stream", "<u2"),
        Column("seq", "<i8", 0, INT64_MAX - 1),
        Column("t_capture", "<f8", 0, TIME_MAX),
        Column("outcome", "u1", EMBEDDED, SKIPPED),
        Column("brightness", "<f4", 0, 255, nan=True),
        Column("contrast", "<f4", 0, 255, nan=True),
        Column("thumbnail", "<u4"),
    )
    BLOBS: ClassVar[tuple[str, ...]] = ("thumbnail",)
    worker: Name
    model: Name = ""
    t_encoded: Time = 0.0
    streams: Annotated[dict[StreamName, Number], MaxItems(MAX_BATCH_NAMES)] = field(default_factory=dict)
    reasons: Annotated[dict[RowKey, Text], MaxItems(MAX_NOTES)] = field(default_factory=dict)

    def vector_rows(self) -> int:
        return int(np.count_nonzero(self.columns["outcome"] == EMBEDDED))

    def _problem(self) -> str | None:
        c = self.columns
        problem = _table_problem(self.streams, c["stream"], "streams")
        if problem is not None:
            return problem
        skipped = c["outcome"] == SKIPPED
        if {str(i) for i in np.flatnonzero(skipped).tolist()} != self.reasons.keys():
            return "its reasons are not exactly its skipped rows'"
        if (c["thumbnail"][skipped] != 0).any():
            return "a skipped row has a thumbnail"
        return None

    @classmethod
    def of(cls, rows: Sequence[Embedding | Skipped]) -> Results:
        """One batch of these rows (of one worker, one model, one t_encoded: ``many`` cuts them so)."""
        names: dict[str, int] = {}
        stream = [names.setdefault(r.stream, len(names)) for r in rows]
        embedded = [r for r in rows if isinstance(r, Embedding)]
        first = embedded[0] if embedded else None
        thumbs = [r.thumbnail if isinstance(r, Embedding) else b"" for r in rows]
        dim = int(first.vector.size) if first is not None else 0
        return cls(
            worker=rows[0].worker if rows else "",
            model=first.model if first is not None else "",
            t_encoded=first.t_encoded if first is not None else 0.0,
            streams=names,
            reasons={str(i): r.reason for i, r in enumerate(rows) if isinstance(r, Skipped)},
            columns={
                "stream": np.array(stream, "<u2"),
                "seq": np.array([r.seq for r in rows], "<i8"),
                "t_capture": np.array([r.t_capture if isinstance(r, Embedding) else 0.0 for r in rows], "<f8"),
                "outcome": np.array([EMBEDDED if isinstance(r, Embedding) else SKIPPED for r in rows], "u1"),
                "brightness": np.array(
                    [_nan(r.brightness) if isinstance(r, Embedding) else math.nan for r in rows], "<f4"
                ),
                "contrast": np.array([_nan(r.contrast) if isinstance(r, Embedding) else math.nan for r in rows], "<f4"),
                "thumbnail": np.array([len(t) for t in thumbs], "<u4"),
            },
            blobs={"thumbnail": b"".join(thumbs)},
            vectors=(
                np.stack([np.asarray(r.vector, np.float32) for r in embedded])
                if embedded
                else np.zeros((0, dim), np.float32)
            ),
        )

    @classmethod
    def many(cls, rows: Sequence[Embedding | Skipped]) -> list[Results]:
        """As few batches as hold these rows, in order (one, unless the bounds above cut them)."""

        def key(r: Embedding | Skipped) -> Any:
            return (r.worker, r.model, r.t_encoded, r.vector.size) if isinstance(r, Embedding) else (r.worker,)

        def sizes(r: Embedding | Skipped) -> tuple[int, int]:
            return (4 * r.vector.size, len(r.thumbnail)) if isinstance(r, Embedding) else (0, 0)

        # A skipped row fits any run of its worker: the key that counts is the embedded rows'.
        runs, run_key = [], None
        for run in _runs(rows, lambda r: r.worker, lambda r: r.stream, MAX_BATCH_NAMES,
                         lambda r: isinstance(r, Skipped), sizes):  # fmt: skip
            part: list[Embedding | Skipped] = []
            run_key = None
            for r in run:
                k = key(r) if isinstance(r, Embedding) else None
                if k is not None and run_key is not None and k != run_key:
                    runs.append(part)
                    part = []
                run_key = k if k is not None else run_key
                part.append(r)
            runs.append(part)
        return [cls.of(run) for run in runs]

    def rows(self) -> list[Embedding | Skipped]:
        """The rows, as the per-frame objects ``of`` took (built from lists: no numpy scalar per field)."""
        c = self.columns
        names = {number: name for name, number in self.streams.items()}
        streams = [names[i] for i in c["stream"].tolist()]
        seqs, times, outcomes = c["seq"].tolist(), c["t_capture"].tolist(), c["outcome"].tolist()
        brightness, contrast = _none(c["brightness"].tolist()), _none(c["contrast"].tolist())
        thumbs = self._blob("thumbnail")
        vectors = iter(self.vectors)
        out: list[Embedding | Skipped] = []
        for i, stream in enumerate(streams):
            if outcomes[i] == EMBEDDED:
                out.append(Embedding(stream, seqs[i], times[i], self.worker, self.model, self.t_encoded, next(vectors),
                                     thumbs[i], brightness[i], contrast[i]))  # fmt: skip
            else:
                out.append(Skipped(stream, seqs[i], self.worker, self.reasons[str(i)]))
        return out


COUNT_KEYS: tuple[str, ...] = tuple(typing.get_type_hints(FrameCounts))
ROLLING_STATS = ("mean", "std", "min", "max")
ABSENT, NONE = -1, -2  # an int column's values for a key absent (FrameCounts, Rolling), and for None (published)


@dataclass
class Records(Batch):
    """core -> recorder, viewers: consecutive ``MetricsRecord``s of one stream (seqs rising), one
    row each. Topic ``metrics/STREAM``, as a MetricsRecord's was: subscriptions are unchanged.

    ``workers`` numbers the rows' worker names (the ``worker`` column); ``events`` holds the
    rows that set one off, by row. Columns: a float that may be None is NaN; a count that is
    absent is -1 (``published`` None: -2); a Rolling statistic absent travels as None, and the
    count absent as -1 (a Rolling of neither comes back empty).
    """

    KIND: ClassVar[str] = "records"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("seq", "<i8", 0, INT64_MAX - 1),
        Column("t_capture", "<f8", 0, TIME_MAX),
        Column("t_encoded", "<f8", 0, TIME_MAX),
        Column("worker", "<u2"),
        Column("similarity", "<f8", -1, 1, nan=True),
        Column("drift", "<f8", 0, 2, nan=True),
        Column("rolling_count", "<i8", ABSENT, INT64_MAX),
        *(Column(f"rolling_{k}", "<f8", 0, 2, nan=True) for k in ROLLING_STATS),
        Column("fps", "<f8", 0, None),
        *(Column(f"counts_{k}", "<i8", NONE if k == "published" else ABSENT, INT64_MAX) for k in COUNT_KEYS),
        Column("scene_change", "u1", 0, 1),
        Column("t_metrics", "<f8", 0, TIME_MAX),
        Column("brightness", "<f4", 0, 255, nan=True),
        Column("contrast", "<f4", 0, 255, nan=True),
        Column("thumbnail", "<u4"),
    )
    BLOBS: ClassVar[tuple[str, ...]] = ("thumbnail",)
    stream: StreamName
    core: Name = ""
    model: Name = ""
    workers: Annotated[dict[Name, Number], MaxItems(MAX_WORKER_NAMES)] = field(default_factory=dict)
    events: Annotated[dict[RowKey, Events], MaxItems(MAX_NOTES)] = field(default_factory=dict)

    def topic(self) -> bytes:
        return f"metrics/{self.stream}".encode()

    def _problem(self) -> str | None:
        problem = _table_problem(self.workers, self.columns["worker"], "workers")
        if problem is not None:
            return problem
        seqs = self.columns["seq"]
        if self.n > 1 and not (
            all(a < b for a, b in pairwise(seqs.tolist())) if self.n <= SHORT_COLUMN else (np.diff(seqs) > 0).all()
        ):
            return "its seqs do not rise"
        return _rows_problem(self.events, self.n, "events")

    @classmethod
    def of(cls, records: Sequence[MetricsRecord]) -> Records:
        """One batch of these records (of one stream, core, model and vector length: ``many`` cuts them so)."""
        first = records[0] if records else None
        workers: dict[str, int] = {}
        worker = [workers.setdefault(r.worker, len(workers)) for r in records]
        # One pass over the rows per dtype, into a table whose columns are the message's columns
        # (a comprehension and an np.array per column cost more than the values, for a few rows).
        f8 = np.array(
            [
                (r.t_capture, r.t_encoded, _nan(r.similarity), _nan(r.drift), r.fps, r.t_metrics,
                 *[math.nan if (x := ro.get(k)) is None else x for k in ROLLING_STATS])
                for r, ro in zip(records, (cast(dict, r.rolling) for r in records), strict=True)
            ],
            "<f8",
        ).reshape(-1, 6 + len(ROLLING_STATS))  # fmt: skip
        i8 = np.array(
            [
                (r.seq, cast(dict, r.rolling).get("count", ABSENT),
                 *[NONE if (c := cs.get(k, ABSENT)) is None else c for k in COUNT_KEYS])
                for r, cs in zip(records, (cast(dict, r.counts) for r in records), strict=True)
            ],
            "<i8",
        ).reshape(-1, 2 + len(COUNT_KEYS))  # fmt: skip
        f4 = np.array([(_nan(r.brightness), _nan(r.contrast)) for r in records], "<f4").reshape(-1, 2)
        columns = {
            "worker": np.array(worker, "<u2"),
            "scene_change": np.array([r.scene_change for r in records], "u1"),
            "thumbnail": np.array([len(r.thumbnail) for r in records], "<u4"),
            "brightness": f4[:, 0],
            "contrast": f4[:, 1],
        }
        for j, name in enumerate(("t_capture", "t_encoded", "similarity", "drift", "fps", "t_metrics")):
            columns[name] = f8[:, j]
        for j, k in enumerate(ROLLING_STATS):
            columns[f"rolling_{k}"] = f8[:, 6 + j]
        columns["seq"], columns["rolling_count"] = i8[:, 0], i8[:, 1]
        for j, k in enumerate(COUNT_KEYS):
            columns[f"counts_{k}"] = i8[:, 2 + j]
        dim = int(first.vector.size) if first is not None else 0
        return cls(
            stream=first.stream if first is not None else "",
            core=first.core if first is not None else "",
            model=first.model if first is not None else "",
            workers=workers,
            events={str(i): r.events for i, r in enumerate(records) if r.events},
            columns=columns,
            blobs={"thumbnail": b"".join(r.thumbnail for r in records)},
            vectors=(
                np.stack([np.asarray(r.vector, np.float32) for r in records])
                if records
                else np.zeros((0, dim), np.float32)
            ),
        )

    @classmethod
    def many(cls, records: Sequence[MetricsRecord]) -> list[Records]:
        """As few batches as hold these records, in order: a run of one stream (and core, model,
        vector length) each, within the bounds above."""
        runs = _runs(
            records,
            lambda r: (r.stream, r.core, r.model, r.vector.size),
            lambda r: r.worker,
            MAX_WORKER_NAMES,
            lambda r: bool(r.events),
            lambda r: (4 * r.vector.size, len(r.thumbnail)),
        )
        return [cls.of(run) for run in runs]

    def rows(self) -> list[MetricsRecord]:
        """The records, as ``of`` took them (built from lists: no numpy scalar per field)."""
        c = self.columns
        names = {number: name for name, number in self.workers.items()}
        cols = {col.name: c[col.name].tolist() for col in self.COLUMNS}
        for name in ("similarity", "drift", "brightness", "contrast", *(f"rolling_{k}" for k in ROLLING_STATS)):
            cols[name] = _none(cols[name])
        thumbs = self._blob("thumbnail")
        out = []
        for i in range(self.n):
            count = cols["rolling_count"][i]
            rolling = Rolling() if count == ABSENT else Rolling(count=count)
            stats = {k: cols[f"rolling_{k}"][i] for k in ROLLING_STATS}
            if count != ABSENT or any(v is not None for v in stats.values()):
                rolling.update(stats)  # type: ignore[typeddict-item]
            counts: dict[str, int | None] = {}
            for k in COUNT_KEYS:
                value = cols[f"counts_{k}"][i]
                if value != ABSENT:
                    counts[k] = None if value == NONE else value
            out.append(
                MetricsRecord(
                    stream=self.stream,
                    seq=cols["seq"][i],
                    t_capture=cols["t_capture"][i],
                    t_encoded=cols["t_encoded"][i],
                    worker=names[cols["worker"][i]],
                    model=self.model,
                    similarity=cols["similarity"][i],
                    drift=cols["drift"][i],
                    rolling=rolling,
                    fps=cols["fps"][i],
                    counts=cast(FrameCounts, counts),
                    scene_change=bool(cols["scene_change"][i]),
                    t_metrics=cols["t_metrics"][i],
                    core=self.core,
                    vector=self.vectors[i],
                    thumbnail=thumbs[i],
                    brightness=cols["brightness"][i],
                    contrast=cols["contrast"][i],
                    events=self.events.get(str(i), {}),
                )
            )
        return out


def rows_of(msg: Message) -> Sequence[Message]:
    """A message as the per-frame messages it stands for: a Records' records, any other as itself
    (for consumers of the metrics publisher and the recorder's session, which take records one by one)."""
    return msg.rows() if isinstance(msg, Records) else (msg,)


# -- the data link (docs/PROTOCOL.md, "Protocol 3", step 4): pictures beside the core -----------
# An ingest keeps each JPEG it reads and tells the core only that it has one (``Captured``); the
# core numbers it and says which worker embeds it (``Assigned``); the ingest sends the JPEGs to
# that worker over the worker's data socket (``Pictures``), whose address and public key the
# core names in ``Workers``. Previews and snapshots: ``Preview`` (core -> ingest: the rate a
# watched stream's pictures are wanted at), ``WantPictures`` (recorder -> core -> ingest: seqs
# whose pictures a snapshot needs); the ingest answers both with ``Pictures`` on its session, and
# says which wanted pictures it no longer has (``NoPictures``, also the core's answer when the
# stream's ingest is gone).

MAX_WORKER_LINKS = 256  # entries of a Workers' map of workers, or of keys a worker admits
WORKER_NUMBER = re.compile(r"[1-9][0-9]{0,4}")
# A worker's number as a Workers map's key (decimal; 0 is none: Assigned's "dropped").
WorkerNumber = Annotated[str, MaxLen(5), Matches(WORKER_NUMBER, "a worker's number (1-65535, decimal)")]
Z85_KEY = re.compile(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
PublicKey = Annotated[str, MaxLen(40), Matches(Z85_KEY, "a CurveZMQ public key (40 characters of z85)")]
NO_WORKER = 0  # Assigned's worker column: the capture is dropped


Address = Annotated[str, MaxLen(256)]  # a ZeroMQ endpoint
ShortName = Annotated[str, MaxLen(128)]  # whose a key is, in a Workers' admit (bounded: 256 of them in a header)


U32 = Annotated[int, Range(0, 2**32 - 1)]
U16 = Annotated[int, Range(0, 65535)]


@dataclass
class CaptureNote:
    """A row of ``Captured``: a capture the ingest holds under ``id`` (its own, unique among those in flight)."""

    id: U32
    t_capture: Time
    bytes: U32
    width: Pixels
    height: Pixels


@dataclass
class Assignment:
    """A row of ``Assigned``: the capture ``id`` is ``seq``, embedded by worker ``worker`` (NO_WORKER: dropped)."""

    id: U32
    seq: Seq
    worker: U16


class WorkerLink(TypedDict):
    address: Address  # the worker's data socket, as the ingest reaches it (tcp://HOST:PORT, ipc://...)
    key: Annotated[str, MaxLen(40)]  # its public key (z85), "" without keys


@dataclass
class Captured(Batch):
    """ingest -> core: captures the ingest holds, by its own id (no JPEG: it stays in the ingest's outbox)."""

    KIND: ClassVar[str] = "captured"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("id", "<u4"),
        Column("t_capture", "<f8", 0, TIME_MAX),
        Column("bytes", "<u4"),
        Column("width", "<u2", 1),
        Column("height", "<u2", 1),
    )

    def vector_rows(self) -> int:
        return 0

    def _problem(self) -> str | None:
        ids = self.columns["id"]
        # A few ids (a camera's captures at its rate): a set of them costs a tenth of np.unique.
        distinct = len(set(ids.tolist())) if ids.size <= SHORT_COLUMN else len(np.unique(ids))
        return "its ids are not distinct" if distinct != self.n else None

    @classmethod
    def of(cls, rows: Sequence[CaptureNote]) -> Captured:
        return cls(columns={
            "id": np.array([r.id for r in rows], "<u4"),
            "t_capture": np.array([r.t_capture for r in rows], "<f8"),
            "bytes": np.array([r.bytes for r in rows], "<u4"),
            "width": np.array([r.width for r in rows], "<u2"),
            "height": np.array([r.height for r in rows], "<u2"),
        })  # fmt: skip

    def rows(self) -> list[CaptureNote]:
        c = self.columns
        return [CaptureNote(*row) for row in zip(c["id"].tolist(), c["t_capture"].tolist(), c["bytes"].tolist(),
                                                   c["width"].tolist(), c["height"].tolist(), strict=True)]  # fmt: skip


@dataclass
class Assigned(Batch):
    """core -> ingest: each capture's seq and the worker that embeds it (``NO_WORKER``: dropped)."""

    KIND: ClassVar[str] = "assigned"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("id", "<u4"),
        Column("seq", "<i8", 0, INT64_MAX - 1),
        Column("worker", "<u2"),
    )

    def vector_rows(self) -> int:
        return 0

    @classmethod
    def of(cls, rows: Sequence[Assignment]) -> Assigned:
        return cls(columns={
            "id": np.array([r.id for r in rows], "<u4"),
            "seq": np.array([r.seq for r in rows], "<i8"),
            "worker": np.array([r.worker for r in rows], "<u2"),
        })  # fmt: skip

    def rows(self) -> list[Assignment]:
        c = self.columns
        return [Assignment(*row) for row in zip(c["id"].tolist(), c["seq"].tolist(), c["worker"].tolist(), strict=True)]


@dataclass
class Workers(Message):
    """core -> ingests: every worker's data address and public key (``links``, by worker number);
    core -> a worker: the public keys of the ingests it must admit on its data socket (``admit``,
    key -> the ingest's name, and its ``generation``: the worker answers ``Admits`` with it once its
    data socket lets those keys in). Sent whenever it changes; each is the whole of it, not a change."""

    KIND: ClassVar[str] = "workers"
    links: Annotated[dict[WorkerNumber, WorkerLink], MaxItems(MAX_WORKER_LINKS)] = field(default_factory=dict)
    admit: Annotated[dict[PublicKey, Annotated[str, MaxLen(128)]], MaxItems(MAX_WORKER_LINKS)] = field(
        default_factory=dict
    )
    generation: Count = 0  # of ``admit``: the core's count of its changes


@dataclass
class Admits(Message):
    """worker -> core: its data socket admits the ingest keys of the ``Workers`` of this ``generation``
    from now on. The core tells an ingest a worker's link, and gives that worker the ingest's captures,
    only once the worker admits the ingest's key (docs/PROTOCOL.md, "Keys on the data link")."""

    KIND: ClassVar[str] = "admits"
    generation: Count


@dataclass
class Pictures(Batch):
    """ingest -> worker (its data link): the JPEGs the core assigned it, one part a row (sent without
    a copy); ingest -> core (its session): previews and the pictures a snapshot wants."""

    KIND: ClassVar[str] = "pictures"
    COLUMNS: ClassVar[tuple[Column, ...]] = (
        Column("seq", "<i8", 0, INT64_MAX - 1),
        Column("t_capture", "<f8", 0, TIME_MAX),
        Column("width", "<u2", 1),
        Column("height", "<u2", 1),
        Column("bytes", "<u4"),
    )
    ROW_PARTS: ClassVar[bool] = True
    stream: StreamName
    preview: bool = False  # previews (the core publishes them), else pictures a snapshot wanted
    jpegs: list[Any] = field(default_factory=list, kw_only=True)  # one a row: bytes, or a zmq.Frame

    def vector_rows(self) -> int:
        return 0

    @classmethod
    def of(cls, stream: str, frames: Sequence[Frame], preview: bool = False) -> Pictures:
        return cls(
            stream,
            preview,
            columns={
                "seq": np.array([f.seq for f in frames], "<i8"),
                "t_capture": np.array([f.t_capture for f in frames], "<f8"),
                "width": np.array([f.width for f in frames], "<u2"),
                "height": np.array([f.height for f in frames], "<u2"),
                "bytes": np.array([len(f.jpeg) for f in frames], "<u4"),
            },
            jpegs=[f.jpeg for f in frames],
        )

    def rows(self) -> list[Frame]:
        return self.frames()

    def frames(self) -> list[Frame]:
        """The rows as Frames (the worker's intake, the frames publisher take those)."""
        c = self.columns
        rows = zip(c["seq"].tolist(), c["t_capture"].tolist(), c["width"].tolist(), c["height"].tolist(),
                   self.jpegs, strict=True)  # fmt: skip
        return [Frame(self.stream, seq, t, w, h, bytes(jpeg)) for seq, t, w, h, jpeg in rows]


@dataclass
class Preview(Message):
    """core -> ingest: send pictures of the stream at most ``fps`` a second (0: none), someone watches it."""

    KIND: ClassVar[str] = "preview"
    fps: Annotated[float, Range(0, 1000)] = 0.0


@dataclass
class StreamSeqs(Batch):
    """Seqs of one stream, a column of them: what ``WantPictures`` and ``NoPictures`` carry."""

    COLUMNS: ClassVar[tuple[Column, ...]] = (Column("seq", "<i8", 0, INT64_MAX - 1),)
    stream: StreamName

    def vector_rows(self) -> int:
        return 0

    @classmethod
    def of(cls, stream: str, seqs: Sequence[int]) -> Self:
        return cls(stream, columns={"seq": np.array(seqs, "<i8")})

    def seqs(self) -> list[int]:
        return cast(list[int], self.columns["seq"].tolist())

    def rows(self) -> list[StreamSeq]:
        return [StreamSeq(self.stream, seq) for seq in self.seqs()]


@dataclass
class WantPictures(StreamSeqs):
    """recorder -> core -> ingest: the pictures of these seqs of ``stream`` (snapshots), from the ingest's ring."""

    KIND: ClassVar[str] = "want_pictures"


@dataclass
class NoPictures(StreamSeqs):
    """ingest -> core -> recorder (none in its ring any more), or core -> recorder (the stream's ingest is
    gone): these seqs' pictures, which a ``WantPictures`` asked for, will not come. The recorder misses
    those snapshots at once, instead of after waiting ENCODERS_SNAPSHOT_WAIT for each."""

    KIND: ClassVar[str] = "no_pictures"


@dataclass
class StreamSeq:
    """A row of ``WantPictures`` or ``NoPictures``."""

    stream: StreamName
    seq: Seq


# -- statistics ----------------------------------------------------------------------------


@dataclass
class Stats(Message):
    """A service's counters, now and then, for viewers and logs (ingest's reach them through the core)."""

    KIND: ClassVar[str] = "stats"
    service: Name
    stream: StreamName
    counters: Counters = field(default_factory=dict)
    t: Time = field(default_factory=time.time)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (
        Hello,
        Welcome,
        Refused,
        Heartbeat,
        Bye,
        Stop,
        Stopped,
        Draining,
        CaptureEnded,
        Credit,
        StreamStart,
        Frame,
        EndOfStream,
        MetricsRecord,
        Ready,
        Results,
        Records,
        Acks,
        Captured,
        Assigned,
        Workers,
        Admits,
        Pictures,
        Preview,
        WantPictures,
        NoPictures,
        Stats,
    )
}


@dataclass(frozen=True)
class _Layout:
    """What encode/decode need to know of a message class, worked out once (not per message:
    they run for every frame of every camera)."""

    header_fields: tuple[str, ...]
    # (field, its check) for every header field, in declaration order.
    checks: tuple[tuple[str, Check], ...]
    required: frozenset[str]


def _layout(cls: type[Message]) -> _Layout:
    hints = typing.get_type_hints(cls, include_extras=True)
    header = [f for f in dataclasses.fields(cls) if f.name not in cls.BUFFERS]
    return _Layout(
        header_fields=tuple(f.name for f in header),
        checks=tuple((f.name, checker(hints[f.name])) for f in header),
        required=frozenset(
            f.name for f in header if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ),
    )


_LAYOUTS: dict[type, _Layout] = {cls: _layout(cls) for cls in MESSAGE_TYPES.values()}


def _largest_header(cls: type[Message]) -> Packed:
    """The most room a header of ``cls`` takes (as ``encode`` makes it): ``v``, ``k``, every
    header field at its largest, and ``dim`` beside a vector."""
    hints = typing.get_type_hints(cls, include_extras=True)
    entries = [("v", packed(int)), ("k", packed_str(cls.KIND))]
    entries += [(f.name, packed(hints[f.name])) for f in dataclasses.fields(cls) if f.name not in cls.BUFFERS]
    if "vector" in cls.BUFFERS:
        entries.append(("dim", packed(int)))
    if issubclass(cls, Batch):
        entries += [("n", packed(int)), ("dim", packed(int))]
    out = Packed(map_header(len(entries)), 0, len(entries))
    for name, value in entries:
        key = packed_str(name)
        out = Packed(out.size + key.size + value.size, out.longest_str, out.most_entries) | key | value
    return out


# Bounds of a header, applied before it is unpacked (``decode``). A header is unpacked whole
# before its session is even looked up, so an unbounded one costs memory and time to anyone
# who reaches the socket: a 60 MB "array of empty arrays" took the core to 4.5 GB and blocked
# its loop for 46 s (issue #22). Each bound is what the largest legal message needs, worked
# out from the annotations above (validation.packed), so a new field's bound is the
# unpacker's too:
_LARGEST_HEADER = functools.reduce(operator.or_, (_largest_header(cls) for cls in MESSAGE_TYPES.values()))
# - its bytes: the largest kind's (Stopped: 4096 streams, each name and count at its longest;
#   about 1.8 MB, where a real one is a fraction of that). Unpacked, a header of n bytes takes
#   some 20 n of memory at worst (maps of empty maps, each key distinct): tens of MB, once.
HEADER_MAX_BYTES = _LARGEST_HEADER.size
_UNPACK_LIMITS: dict[str, Any] = {
    # - a str: the longest field's (a Text: 4096 characters of up to 4 bytes in UTF-8);
    "max_str_len": _LARGEST_HEADER.longest_str,
    # - a map: the largest MaxItems (4096 streams of a Stopped or a Ready);
    "max_map_len": _LARGEST_HEADER.most_entries,
    # - a list, binary, an extension type: no header holds any (bytes travel as parts of their
    #   own, after the header). Only an empty one passes; a list of anything is refused at once.
    "max_array_len": 0,
    "max_bin_len": 0,
    "max_ext_len": 0,
}


_PACKINGS: dict[str, tuple[tuple[Column, np.dtype], ...]] = {}  # by KIND: worked out once a kind


def packing(cls: type[Batch]) -> tuple[tuple[Column, np.dtype], ...]:
    """The order of a batch's columns in its part of columns: the widest dtypes first (in the
    order of COLUMNS among equals), so that every column starts at a multiple of its itemsize."""
    known = _PACKINGS.get(cls.KIND)
    if known is None:
        order = sorted(cls.COLUMNS, key=lambda col: -np.dtype(col.dtype).itemsize)
        known = _PACKINGS[cls.KIND] = tuple((col, np.dtype(col.dtype)) for col in order)
    return known


_ROW_BYTES: dict[str, int] = {}  # by KIND (decode asks for every batch)


def row_bytes(cls: type[Batch]) -> int:
    """Bytes of one row in a batch's part of columns."""
    known = _ROW_BYTES.get(cls.KIND)
    if known is None:
        known = _ROW_BYTES[cls.KIND] = sum(dtype.itemsize for _, dtype in packing(cls))
    return known


def column_span(cls: type[Batch], name: str, n: int) -> tuple[int, int]:
    """Where column ``name`` of a batch of ``n`` rows lies in its part of columns: (offset, length)."""
    at = 0
    for col, dtype in packing(cls):
        if col.name == name:
            return at, n * dtype.itemsize
        at += n * dtype.itemsize
    raise KeyError(name)


# A batch's part of columns at most: MAX_BATCH rows of the widest row (a Records' ~200 bytes).
COLUMNS_PART_MAX = max(MAX_BATCH * row_bytes(cls) for cls in MESSAGE_TYPES.values() if issubclass(cls, Batch))


def largest_part(jpeg_bytes: int = 0, *, batches: bool = False) -> int:
    """The largest part of any legal message on a socket that carries JPEGs of at most
    ``jpeg_bytes`` (0: none), and ``batches`` (Results, Records), for zmq.MAXMSGSIZE, which
    ZeroMQ applies to each part: a header (HEADER_MAX_BYTES), a batch's columns
    (COLUMNS_PART_MAX), a JPEG, or a batch's other parts (BATCH_PART_MAX: its vectors, or its
    thumbnails end to end)."""
    return max(HEADER_MAX_BYTES, COLUMNS_PART_MAX, jpeg_bytes, BATCH_PART_MAX if batches else 0)


_ABSENT = object()


def _buffer_out(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        # Sent without a copy when already contiguous float32 (the normal case).
        return np.ascontiguousarray(value, dtype=np.float32).data.cast("B")
    return value


def encode(msg: Message, *, with_topic: bool = False) -> list:
    """Message -> list of parts for ``socket.send_multipart``."""
    header: dict[str, Any] = {"v": SCHEMA_VERSION, "k": msg.KIND}
    for name in _LAYOUTS[type(msg)].header_fields:
        header[name] = getattr(msg, name)
    if isinstance(msg, Batch):
        return _encode_batch(msg, header, with_topic)
    for name in msg.BUFFERS:
        value = getattr(msg, name)
        if isinstance(value, np.ndarray):
            header["dim"] = int(value.size)
    parts: list = [msgpack.packb(header, use_bin_type=True)]
    parts.extend(_buffer_out(getattr(msg, name)) for name in msg.BUFFERS)
    if with_topic:
        parts.insert(0, msg.topic())
    return parts


def decode(parts: Sequence[Any], *, with_topic: bool = False) -> Message:
    """Parts from ``socket.recv_multipart`` -> Message, or DecodeError."""
    parts = list(parts)
    if with_topic:
        if not parts:
            raise DecodeError("empty message")
        parts = parts[1:]
    if not parts:
        raise DecodeError("message has no header")
    # The header's length before anything of it is copied or unpacked (a zmq.Frame or bytes).
    if len(parts[0]) > HEADER_MAX_BYTES:
        raise DecodeError(f"a header of {len(parts[0])} bytes: no message's is over {HEADER_MAX_BYTES}")
    try:
        header = msgpack.unpackb(bytes(parts[0]), raw=False, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"header is not msgpack, or past the bounds of any header: {exc}") from None
    if not isinstance(header, dict):
        raise DecodeError("header is not a map")
    version, kind = header.get("v"), header.get("k")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise DecodeError(f"schema version {show(version)}, expected {SCHEMA_VERSION}")
    # type() first: a kind that is a list or a map cannot even be looked up.
    cls = MESSAGE_TYPES.get(kind) if type(kind) is str else None
    if cls is None:
        raise DecodeError(f"unknown message kind {show(kind)}")
    buffers = parts[1:]
    if issubclass(cls, Batch):
        fixed = 1 + len(cls.BLOBS) + 1
        if (
            len(buffers) != fixed
            and not (cls.ROW_PARTS and len(buffers) > fixed)
            and _column_parts(cls, len(buffers)) == 1
        ):
            raise DecodeError(f"{cls.KIND}: expected {fixed} parts, got {len(buffers)}")
    elif len(buffers) != len(cls.BUFFERS):
        raise DecodeError(f"{cls.KIND}: expected {len(cls.BUFFERS)} buffer(s), got {len(buffers)}")
    layout = _LAYOUTS[cls]
    kwargs: dict[str, Any] = {}
    try:
        for name, check in layout.checks:
            value = header.get(name, _ABSENT)
            if value is not _ABSENT:  # absent: a default, or missing (below)
                kwargs[name] = check(value)
    except Invalid as exc:
        raise DecodeError(f"{cls.KIND}: field {name!r}: {exc}") from None
    missing = layout.required - kwargs.keys()
    if missing:
        raise DecodeError(f"{cls.KIND}: missing field {sorted(missing)[0]!r}")
    if issubclass(cls, Batch):
        return _decode_batch(cls, header, kwargs, buffers)
    for name, raw in zip(cls.BUFFERS, buffers, strict=False):
        data = raw.buffer if hasattr(raw, "buffer") else raw  # zmq.Frame or bytes
        if name == "vector":
            kwargs[name] = _vector(cls.KIND, data, header.get("dim"))
        else:
            kwargs[name] = bytes(data)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise DecodeError(f"{cls.KIND}: {exc}") from None


def _vector(kind: str, data: Any, dim: Any) -> np.ndarray:
    """The float32 vector a buffer holds: exactly ``dim`` values, every one finite."""
    if type(dim) is not int or dim < 0 or len(data) != dim * 4:
        raise DecodeError(f"{kind}: vector of {len(data)} bytes, header says dim={dim!r}")
    vector = np.frombuffer(data, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise DecodeError(f"{kind}: field 'vector': expected finite values, got a NaN or an infinity")
    return vector


def _columns_part(msg: Batch) -> bytes:
    columns = msg.columns
    return b"".join([np.ascontiguousarray(columns[col.name], dtype).tobytes() for col, dtype in packing(type(msg))])


def _encode_batch(msg: Batch, header: dict[str, Any], with_topic: bool) -> list:
    vectors = msg.vectors
    header["n"], header["dim"] = msg.n, int(vectors.shape[1])
    parts: list = [msgpack.packb(header, use_bin_type=True), _columns_part(msg)]
    parts += [msg.blobs[name] for name in msg.BLOBS]
    # Sent without a copy when already contiguous float32 (the normal case).
    parts.append(np.ascontiguousarray(vectors, dtype=np.float32).data.cast("B") if vectors.size else b"")
    if msg.ROW_PARTS:
        parts += cast(Pictures, msg).jpegs  # as they are: a zmq.Frame or bytes is sent without a copy
    if with_topic:
        parts.insert(0, msg.topic())
    return parts


def _column_parts(cls: type[Batch], parts: int) -> int:
    """How many of a batch's parts hold its columns: 1, or one a column (a batch from before they
    shared a part: exactly that many parts, as no such batch had parts a row)."""
    old = len(cls.COLUMNS) + len(cls.BLOBS) + 1
    return len(cls.COLUMNS) if len(cls.COLUMNS) > 1 and not cls.ROW_PARTS and parts == old else 1


def _decode_batch(cls: type[Batch], header: dict, kwargs: dict[str, Any], buffers: Sequence[Any]) -> Batch:
    """The columns, blobs and vectors of a batch, each checked by its length and its values."""
    kind, n, dim = cls.KIND, header.get("n"), header.get("dim")
    if type(n) is not int or not 0 <= n <= MAX_BATCH:
        raise DecodeError(f"{kind}: n={show(n)}, expected an int in [0, {MAX_BATCH}]")
    if type(dim) is not int or not 0 <= dim <= MAX_DIM:
        raise DecodeError(f"{kind}: dim={show(dim)}, expected an int in [0, {MAX_DIM}]")
    datas = [raw.buffer if hasattr(raw, "buffer") else raw for raw in buffers]  # zmq.Frame or bytes
    columns: dict[str, np.ndarray] = {}
    ncols = _column_parts(cls, len(buffers))
    if ncols == 1:  # one part of columns, in ``packing`` order
        data, at = datas[0], 0
        row = row_bytes(cls)
        if len(data) != n * row:
            raise DecodeError(f"{kind}: columns of {len(data)} bytes, for {n} rows of {row}")
        for col, dtype in packing(cls):
            columns[col.name] = np.frombuffer(data, dtype, n, at)
            at += n * dtype.itemsize
    else:  # one part a column, in COLUMNS order (before the columns shared a part)
        for col, data in zip(cls.COLUMNS, datas, strict=False):
            dtype = np.dtype(col.dtype)
            if len(data) != n * dtype.itemsize:
                raise DecodeError(f"{kind}: column {col.name!r} of {len(data)} bytes, for {n} rows of {dtype.itemsize}")
            columns[col.name] = np.frombuffer(data, dtype)
    for col in cls.COLUMNS:
        problem = col.problem(columns[col.name])
        if problem is not None:
            raise DecodeError(f"{kind}: column {col.name!r}: {problem}")
    blobs: dict[str, bytes] = {}
    for name, data in zip(cls.BLOBS, datas[ncols:], strict=False):
        total = int(columns[name].sum(dtype=np.uint64))
        if len(data) != total or total > BATCH_PART_MAX:
            raise DecodeError(f"{kind}: {name}s of {len(data)} bytes, their lengths say {total}")
        blobs[name] = bytes(data)
    msg = cls(**kwargs, columns=columns, blobs=blobs)
    fixed = ncols + len(cls.BLOBS) + 1
    if cls.ROW_PARTS:
        jpegs = list(buffers[fixed:])
        if len(jpegs) != n:
            raise DecodeError(f"{kind}: {len(jpegs)} pictures, for {n} rows")
        if n and [len(j) for j in jpegs] != columns["bytes"].tolist():
            raise DecodeError(f"{kind}: a picture's length is not its row's bytes")
        cast(Pictures, msg).jpegs = jpegs
    rows, data = msg.vector_rows(), datas[fixed - 1]
    if len(data) != rows * dim * 4 or len(data) > BATCH_PART_MAX:
        raise DecodeError(f"{kind}: vectors of {len(data)} bytes, for {rows} rows of dim={dim}")
    msg.vectors = np.frombuffer(data, np.float32).reshape(rows, dim)
    if not np.isfinite(msg.vectors).all():
        raise DecodeError(f"{kind}: vectors: expected finite values, got a NaN or an infinity")
    problem = msg._problem()
    if problem is not None:
        raise DecodeError(f"{kind}: {problem}")
    return msg
