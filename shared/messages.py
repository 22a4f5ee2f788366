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
import operator
import re
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypedDict

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

SCHEMA_VERSION = 2  # 2: sessions with the core (docs/PROTOCOL.md)
PROTOCOL = 2
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


# -- frames and their outcomes ----------------------------------------------------------


@dataclass
class Capture(Message):
    """ingest -> core: a JPEG the camera sent. Unnumbered: the core numbers frames (docs/PROTOCOL.md)."""

    KIND: ClassVar[str] = "capture"
    BUFFERS: ClassVar[tuple[str, ...]] = ("jpeg",)
    t_capture: Time
    width: Pixels
    height: Pixels
    jpeg: bytes = b""


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


@dataclass
class Skipped(Message):
    """worker -> core: a frame it could not embed (a corrupt JPEG, a failed batch)."""

    KIND: ClassVar[str] = "skipped"
    stream: StreamName
    seq: Seq
    worker: Name
    reason: Text


@dataclass
class Embedding(Message):
    """worker -> core: an L2-normalised CLIP embedding of one frame, and a small JPEG of it."""

    KIND: ClassVar[str] = "embedding"
    BUFFERS: ClassVar[tuple[str, ...]] = ("vector", "thumbnail")
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
class Ack(Message):
    """recorder -> core: every record of ``stream`` up to ``seq`` is durable (and its end, if ``ended``)."""

    KIND: ClassVar[str] = "ack"
    stream: StreamName
    seq: Annotated[int, Range(-1, INT64_MAX - 1)]
    ended: bool = False


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
        Capture,
        CaptureEnded,
        Credit,
        StreamStart,
        Frame,
        Skipped,
        Embedding,
        EndOfStream,
        MetricsRecord,
        Ready,
        Ack,
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


def largest_part(jpeg_bytes: int = 0) -> int:
    """The largest part of any legal message on a socket that carries JPEGs of at most
    ``jpeg_bytes`` (0: none), for zmq.MAXMSGSIZE, which ZeroMQ applies to each part: a header
    (HEADER_MAX_BYTES), a JPEG, or another buffer (an embedding's vector, at most 65,536 floats
    or 256 KB; a worker's thumbnail, a smaller picture of a frame), smaller than either."""
    return max(HEADER_MAX_BYTES, jpeg_bytes)


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
    if len(buffers) != len(cls.BUFFERS):
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
