"""Every message that crosses a ZeroMQ socket in this project, defined once.

A message travels as a multipart ZeroMQ message:

    [topic]  header  [buffer ...]

- ``topic`` is present only on PUB/SUB sockets (``kind/stream`` as bytes), so that a
  subscriber filters by kind and stream without decoding anything.
- ``header`` is a msgpack map: ``v`` (schema version), ``k`` (kind) and the message's
  plain fields.
- Binary payloads (the JPEG bytes, the float32 embedding) travel as their own parts,
  unchanged: never copied into the header, never pickled.

``decode`` trusts nothing: a wrong version, an unknown kind, a missing field or a
buffer of the wrong size raises ``DecodeError``, which services count and drop.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

SCHEMA_VERSION = 1
# A stream's name: it names folders and database rows, so only these characters.
STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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


@dataclass
class StreamStart(Message):
    """Ingest has (re)started a stream; sequence numbers begin at ``first_seq``."""

    KIND: ClassVar[str] = "start"
    stream: str
    first_seq: int
    url: str = ""
    t: float = field(default_factory=time.time)


@dataclass
class Frame(Message):
    """One JPEG frame as the camera sent it."""

    KIND: ClassVar[str] = "frame"
    BUFFERS: ClassVar[tuple[str, ...]] = ("jpeg",)
    stream: str
    seq: int
    t_capture: float
    width: int
    height: int
    jpeg: bytes = b""


@dataclass
class Dropped(Message):
    """Ingest dropped a frame before encoding (real-time mode: no worker was free)."""

    KIND: ClassVar[str] = "dropped"
    stream: str
    seq: int
    reason: str = "no free encoder"


@dataclass
class Skipped(Message):
    """An encoder received a frame it could not decode (a corrupt JPEG)."""

    KIND: ClassVar[str] = "skipped"
    stream: str
    seq: int
    worker: str
    reason: str


@dataclass
class Embedding(Message):
    """An L2-normalised CLIP embedding of one frame."""

    KIND: ClassVar[str] = "embedding"
    BUFFERS: ClassVar[tuple[str, ...]] = ("vector",)
    stream: str
    seq: int
    t_capture: float
    worker: str
    model: str
    t_encoded: float = field(default_factory=time.time)
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass
class EndOfStream(Message):
    """No frame of ``stream`` will follow ``last_seq``; ``counts`` are the sender's totals."""

    KIND: ClassVar[str] = "eos"
    stream: str
    last_seq: int
    counts: dict = field(default_factory=dict)


@dataclass
class MetricsRecord(Message):
    """One embedded frame, in sequence order, with its similarity to the previous one.

    ``similarity`` and ``drift`` are None for the first embedded frame of a stream.
    ``rolling`` holds mean/std/min/max/count of drift over the rolling window;
    ``counts`` the stream's running totals (embedded, dropped, skipped, lost, ...).
    """

    KIND: ClassVar[str] = "metrics"
    BUFFERS: ClassVar[tuple[str, ...]] = ("vector",)
    stream: str
    seq: int
    t_capture: float
    t_encoded: float
    worker: str
    model: str
    similarity: float | None
    drift: float | None
    rolling: dict = field(default_factory=dict)
    fps: float = 0.0
    counts: dict = field(default_factory=dict)
    scene_change: bool = False
    t_metrics: float = field(default_factory=time.time)
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass
class Credit(Message):
    """An encoder worker can take ``n`` more frames (sent worker -> ingest)."""

    KIND: ClassVar[str] = "credit"
    worker: str
    n: int


@dataclass
class Stats(Message):
    """A service's counters, published now and then for viewers and logs."""

    KIND: ClassVar[str] = "stats"
    service: str
    stream: str
    counters: dict = field(default_factory=dict)
    t: float = field(default_factory=time.time)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (StreamStart, Frame, Dropped, Skipped, Embedding, EndOfStream, MetricsRecord, Credit, Stats)
}


@dataclass(frozen=True)
class _Layout:
    """What encode/decode need to know of a message class, worked out once (not per message:
    they run for every frame of every camera)."""

    header_fields: tuple[str, ...]
    required: frozenset[str]


_LAYOUTS: dict[type, _Layout] = {
    cls: _Layout(
        tuple(f.name for f in dataclasses.fields(cls) if f.name not in cls.BUFFERS),
        frozenset(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in cls.BUFFERS
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ),
    )
    for cls in MESSAGE_TYPES.values()
}


def _buffer_out(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        # Sent without a copy when already contiguous float32 (the normal case).
        return memoryview(np.ascontiguousarray(value, dtype=np.float32)).cast("B")
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
    try:
        header = msgpack.unpackb(bytes(parts[0]), raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"header is not msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise DecodeError("header is not a map")
    if header.get("v") != SCHEMA_VERSION:
        raise DecodeError(f"schema version {header.get('v')!r}, expected {SCHEMA_VERSION}")
    cls = MESSAGE_TYPES.get(header.get("k"))
    if cls is None:
        raise DecodeError(f"unknown message kind {header.get('k')!r}")
    buffers = parts[1:]
    if len(buffers) != len(cls.BUFFERS):
        raise DecodeError(f"{cls.KIND}: expected {len(cls.BUFFERS)} buffer(s), got {len(buffers)}")
    layout = _LAYOUTS[cls]
    kwargs: dict[str, Any] = {name: header[name] for name in layout.header_fields if name in header}
    missing = layout.required - kwargs.keys()
    if missing:
        raise DecodeError(f"{cls.KIND}: missing field {sorted(missing)[0]!r}")
    for name, raw in zip(cls.BUFFERS, buffers, strict=False):
        data = raw.buffer if hasattr(raw, "buffer") else raw  # zmq.Frame or bytes
        if name == "vector":
            dim = header.get("dim")
            if not isinstance(dim, int) or len(data) != dim * 4:
                raise DecodeError(f"{cls.KIND}: vector of {len(data)} bytes, header says dim={dim!r}")
            kwargs[name] = np.frombuffer(data, dtype=np.float32)
        else:
            kwargs[name] = bytes(data)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise DecodeError(f"{cls.KIND}: {exc}") from None
