"""The wire format: every message survives a round trip; anything else is a DecodeError."""

import typing

import msgpack
import numpy as np
import pytest

from encoders.services.metrics.drift import DriftTracker
from encoders.services.metrics.streams import Streams
from encoders.shared import messages
from encoders.shared.messages import (
    Ack,
    Acks,
    Batch,
    Bye,
    CaptureEnded,
    Credit,
    DecodeError,
    Embedding,
    EndOfStream,
    Frame,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    NoPictures,
    Ready,
    Records,
    Refused,
    Results,
    Skipped,
    Stats,
    Stop,
    Stopped,
    StreamStart,
    WantPictures,
    Welcome,
)
from encoders.shared.validation import MaxLen, Range, checker

from .message_strategies import assert_conforms, near_miss_examples

V = messages.SCHEMA_VERSION

SAMPLES = [
    StreamStart("cam0", 0, "http://pi:8000/stream.mjpg"),
    Frame("cam0", 7, 1700000000.5, 640, 480, b"\xff\xd8jpeg\xff\xd9"),
    Hello("ingest", "pi-1", 2, stream="cam0", url="http://pi:8000/stream.mjpg", lossless=True),
    Welcome("core-1", 1.0, 5, credit=8, frames="tcp://10.0.0.1:5555"),
    Refused("a second ingest for stream cam0", retry=True),
    Heartbeat(),
    Bye("stopping"),
    Stop("asked"),
    Stopped({"cam0": {"published": 3, "embedded": 3}}),
    WantPictures.of("cam0", [3, 9]),
    NoPictures.of("cam0", [4]),
    CaptureEnded("camera gone", {"corrupt": 1}),
    Ready("20261130-000000", {"cam0": 41}),
    Acks.of([Ack("cam0", 41, ended=True), Ack("cam1", -1)]),
    Results.of(
        [
            Skipped("cam0", 9, "w1", "corrupt JPEG"),
            Embedding("cam0", 10, 1.5, "w1", "ViT-B-32/openai", 2.0, np.arange(512, dtype=np.float32), b"t", 3.5),
            Embedding("cam1", 4, 1.5, "w1", "ViT-B-32/openai", 2.0, np.ones(512, np.float32), contrast=0.25),
        ]
    ),
    Records.of(
        [
            MetricsRecord("cam1", 2, 1.0, 1.1, "w1", "m", None, None, vector=np.ones(4, np.float32), brightness=1.5),
            MetricsRecord(
                "cam1",
                3,
                1.0,
                1.1,
                "w2",
                "m",
                0.9,
                0.1,
                {"count": 1, "mean": 0.1},
                12.5,
                {"embedded": 4, "published": None},
                True,
                vector=np.ones(4, np.float32),
                thumbnail=b"jpg",
                events={"frozen": 61.0, "trigger:door": None},
            ),
        ]
    ),
    EndOfStream("cam0", 10, {"published": 11}),
    MetricsRecord(
        "cam1",
        3,
        1.0,
        1.1,
        "w2",
        "m",
        0.9,
        0.1,
        {"mean": 0.1},
        12.5,
        {"embedded": 4},
        True,
        vector=np.ones(4, np.float32),
    ),
    Credit(64),
    Stats("ingest", "cam0", {"published": 3}),
    messages.Workers(admit={"k" * 40: "ingest cam0"}, generation=7),
    messages.Admits(7),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.KIND)
@pytest.mark.parametrize("with_topic", [False, True])
def test_round_trip(msg, with_topic):
    parts = [bytes(p) for p in messages.encode(msg, with_topic=with_topic)]
    back = messages.decode(parts, with_topic=with_topic)
    assert type(back) is type(msg)
    if isinstance(msg, Batch):
        assert same_rows(back.rows(), msg.rows())  # type: ignore[attr-defined]
        return
    for name in msg.__dataclass_fields__:
        a, b = getattr(msg, name), getattr(back, name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


def same_rows(a: list, b: list) -> bool:
    """Rows (dataclasses) equal field by field, vectors by value."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert type(x) is type(y)
        for name in x.__dataclass_fields__:
            u, v = getattr(x, name), getattr(y, name)
            if isinstance(u, np.ndarray):
                np.testing.assert_array_equal(u, v)
            else:
                assert u == v, (name, u, v)
    return True


def test_binary_payload_travels_as_its_own_part_unchanged():
    jpeg = bytes(range(256)) * 10
    parts = messages.encode(Frame("cam0", 1, 0.0, 2, 2, jpeg))
    assert len(parts) == 2 and bytes(parts[1]) == jpeg
    assert jpeg not in bytes(parts[0])


def test_topic_names_kind_and_stream():
    assert messages.encode(Frame("cam3", 1, 0.0, 2, 2, b""), with_topic=True)[0] == b"frame/cam3"


@pytest.mark.parametrize(
    "parts,why",
    [
        ([], "no header"),
        ([b"\xc1not msgpack"], "not msgpack"),
        ([msgpack.packb(7)], "not a map"),
        ([msgpack.packb([1, 2])], "exceeds max_array_len"),  # no header holds a list
        ([msgpack.packb({"v": 99, "k": "frame"})], "schema version"),
        ([msgpack.packb({"v": V, "k": "nope"})], "unknown message kind"),
        ([msgpack.packb({"v": V, "k": "credit"})], "missing field 'n'"),
        (
            [msgpack.packb({"v": V, "k": "skipped", "stream": "a", "seq": 1, "worker": "w", "reason": "r"})],
            "unknown message kind 'skipped'",
        ),  # protocol 2's, off the wire
        (
            [msgpack.packb({"v": V, "k": "frame", "stream": "a", "seq": 1, "t_capture": 0, "width": 1, "height": 1})],
            "expected 1 buffer",
        ),
        (
            [
                msgpack.packb(
                    {
                        "v": V,
                        "k": "metrics",
                        "stream": "a",
                        "seq": 1,
                        "t_capture": 0,
                        "t_encoded": 0,
                        "worker": "w",
                        "model": "m",
                        "similarity": None,
                        "drift": None,
                        "dim": 4,
                    }
                ),
                b"\x00" * 12,
                b"",
            ],
            "header says dim=4",
        ),
    ],
)
def test_what_does_not_decode_is_a_decode_error(parts, why):
    with pytest.raises(DecodeError, match=why):
        messages.decode(parts)


# -- every field checked against its annotation ----------------------------------------------


def header_of(msg: Message) -> dict:
    return msgpack.unpackb(bytes(messages.encode(msg)[0]))


M = typing.TypeVar("M", bound=Message)


def decode_with(msg: M, **fields: object) -> M:
    """``msg`` through decode, with header fields replaced (or removed, given as REMOVE)."""
    parts = [bytes(p) for p in messages.encode(msg)]
    header = {**header_of(msg), **fields}
    parts[0] = msgpack.packb({k: v for k, v in header.items() if v is not REMOVE}, use_bin_type=True)
    return typing.cast(M, messages.decode(parts))


REMOVE = object()


def past_every_header(value: object) -> bool:
    """Whether ``value`` is past what any header holds (issue #22: bounded as it is unpacked):
    binary (bytes travel as parts of their own), or a map larger than any field's."""
    if isinstance(value, bytes):
        return bool(value)
    if isinstance(value, dict):
        return len(value) > messages._UNPACK_LIMITS["max_map_len"] or any(
            past_every_header(k) or past_every_header(v) for k, v in value.items()
        )
    return False


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.KIND)
def test_every_field_refuses_what_its_annotation_does_not_allow(msg):
    """Each header field given each near miss of its annotation: a DecodeError naming the kind
    and the field, or (a union member that takes it, a typed map's undeclared key, dropped) a
    message that is what its annotations say."""
    hints = typing.get_type_hints(type(msg), include_extras=True)
    tried = refused = 0
    for name in set(header_of(msg)) - {"v", "k", "dim", "n"}:
        for value in near_miss_examples(hints[name]):
            tried += 1
            try:
                back = decode_with(msg, **{name: value})
            except DecodeError as exc:
                refused += 1
                if past_every_header(value):  # refused as it is unpacked, before fields are looked at
                    assert "past the bounds of any header" in str(exc), str(exc)
                    continue
                if isinstance(msg, Batch) and not str(exc).startswith(f"{msg.KIND}: field "):
                    # A value its annotation allows that does not agree with the columns (a table, a row's key).
                    assert str(exc).startswith(f"{msg.KIND}: "), str(exc)
                    continue
                assert str(exc).startswith(f"{msg.KIND}: field {name!r}: "), str(exc)
                assert "expected" in str(exc)
            else:
                assert_conforms(back)
    assert refused > tried / 2 or tried == 0  # most near misses are misses (a Heartbeat has no field)


def test_a_bad_value_is_named_with_its_kind_its_field_and_what_was_expected():
    with pytest.raises(DecodeError, match=r"frame: field 'seq': expected an int in \[0, \d+\], got '7'"):
        decode_with(Frame("cam0", 8, 0.0, 2, 2, b""), seq="7")  # the crash of the issue: a str seq reached metrics
    with pytest.raises(DecodeError, match=r"frame: field 'width': expected an int in \[1, 65535\], got True"):
        decode_with(Frame("cam0", 1, 0.0, 2, 2, b""), width=True)  # a bool is no int here
    with pytest.raises(
        DecodeError, match=r"field 't_capture': expected a finite float in \[0, 253402300799.0\], got nan"
    ):
        decode_with(Frame("cam0", 1, 0.0, 2, 2, b""), t_capture=float("nan"))
    with pytest.raises(DecodeError, match=r"field 'stream': expected a stream name .*, got 'cam 0'"):
        decode_with(Frame("cam0", 8, 0.0, 2, 2, b""), stream="cam 0")
    with pytest.raises(DecodeError, match=r"eos: field 'counts': \['lost'\]: expected an int in \[0, \d+\], got -1"):
        decode_with(EndOfStream("cam0", 3), counts={"lost": -1})
    with pytest.raises(DecodeError, match=r"stats: field 'counters': \['fps'\]: expected .*finite float.*, got inf"):
        decode_with(Stats("ingest", "cam0"), counters={"fps": float("inf")})
    with pytest.raises(DecodeError, match="missing field 'seq'"):
        decode_with(Frame("cam0", 8, 0.0, 2, 2, b""), seq=REMOVE)


def test_a_vector_with_a_nan_or_an_infinity_does_not_decode():
    for bad in (np.nan, np.inf, -np.inf):
        vector = np.ones(4, np.float32)
        vector[2] = bad
        parts = [bytes(p) for p in messages.encode(MetricsRecord("cam0", 1, 0.0, 0.0, "w", "m", None, None,
                                                                 vector=vector))]  # fmt: skip
        with pytest.raises(DecodeError, match="metrics: field 'vector': expected finite values"):
            messages.decode(parts)


def test_dim_must_be_a_plain_int():
    with pytest.raises(DecodeError, match="header says dim=True"):
        decode_with(MetricsRecord("cam0", 1, 0.0, 0.0, "w", "m", None, None, vector=np.ones(1, np.float32)), dim=True)


def test_numbers_arrive_as_their_annotation_says():
    frame = decode_with(Frame("cam0", 1, 0.0, 2, 2, b""), t_capture=3)
    assert frame.t_capture == 3.0 and type(frame.t_capture) is float  # an int where a float goes
    stats = decode_with(Stats("ingest", "cam0", {"published": 3, "fps": 1.5}))
    assert type(stats.counters["published"]) is int  # a counter that is an int stays one (the page shows 3, not 3.0)


def test_a_typed_map_drops_the_keys_it_does_not_declare():
    eos = decode_with(EndOfStream("cam0", 3), counts={"published": 4, "outcome": "ended", "later_count": 1})
    assert eos.counts == {"published": 4}


def test_bounds_at_their_edges():
    assert decode_with(EndOfStream("cam0", 0), last_seq=-1).last_seq == -1  # a stream that published nothing
    with pytest.raises(DecodeError, match="last_seq"):
        decode_with(EndOfStream("cam0", 0), last_seq=-2)
    with pytest.raises(DecodeError, match="'seq'"):
        decode_with(Frame("cam0", 0, 0.0, 2, 2, b""), seq=-1)
    assert decode_with(Frame("cam0", 0, 0.0, 2, 2, b""), seq=messages.INT64_MAX - 1).seq == messages.INT64_MAX - 1
    with pytest.raises(DecodeError, match="'n'"):
        decode_with(Credit(1), n=-1)
    with pytest.raises(DecodeError, match="'reason'"):
        decode_with(Bye("r"), reason="x" * 4097)
    with pytest.raises(DecodeError, match="'counters'"):
        decode_with(Stats("ingest", "cam0"), counters={f"c{i}": 0 for i in range(257)})


def test_what_every_producer_sends_decodes():
    """The payloads as ingest and metrics build them today (ingest's by their keys: its
    counters need a running source)."""
    ingest_eos: messages.FrameCounts = {
        "published": 10,
        "dispatched": 8,
        "dropped": 2,
        "corrupt": 0,
        "reconnects": 1,
        "truncated": 0,
    }
    ingest_stats: dict[str, int | float | None] = {
        "published": 10,
        "dispatched": 8,
        "dropped": 2,
        "corrupt": 0,
        "reconnects": 1,
        "truncated": 0,
        "pending": 0,
        "workers": 2,
        "workers_free": 64,
        "workers_gone": 0,
        "notices_lost": 0,
        "bad_messages": 0,
        "bytes": 123456,
        "fps": 14.93,
    }
    streams = Streams(rolling_window=3, max_wait=1)
    streams.start_epoch("cam0", 0, now=0)
    for seq in range(3):
        streams.numbered("cam0", seq, now=0)
        vector = np.ones(4, np.float32) * (seq + 1)
        streams.outcome("cam0", seq, Embedding("cam0", seq, float(seq), "w", "m", vector=vector), now=0)
    out = streams.release(now=0)
    tracker = DriftTracker(window=3)
    empty_rolling = tracker.rolling()
    for msg in [
        EndOfStream("cam0", 9, ingest_eos),
        Stats("ingest", "cam0", ingest_stats),
        Stats("metrics", "cam0", dict(streams.totals("cam0"))),  # type: ignore[arg-type]  # FrameCounts is Counters
        EndOfStream("cam0", 2, streams.totals("cam0")),
        MetricsRecord("cam0", 0, 0.0, 0.0, "w", "m", None, None, empty_rolling),
        *out,
    ]:
        if isinstance(msg, MetricsRecord):  # as the core sends them: in a batch, and as the spool keeps them
            batch = messages.decode([bytes(p) for p in messages.encode(Records.of([msg]))])
            assert isinstance(batch, Records) and same_rows(batch.rows(), [msg])
        back = messages.decode([bytes(p) for p in messages.encode(msg)])
        assert_conforms(back)
        assert back.__dict__.keys() == msg.__dict__.keys()
        for name in ("counts", "counters", "rolling"):
            if hasattr(msg, name):
                assert getattr(back, name) == getattr(msg, name)  # nothing dropped: every key is declared


def test_an_annotation_that_cannot_be_checked_fails_when_the_check_is_built():
    """So a new field of an unchecked type fails at import, never on the wire."""
    for hint in (list[int], typing.Any, np.ndarray, typing.Annotated[int, MaxLen(3)]):
        with pytest.raises(TypeError):
            checker(hint)
    assert checker(typing.Annotated[int, Range(0, 2)])(2) == 2


def test_times_and_drifts_are_within_what_a_record_can_hold():
    """A capture time must make a date (summary.json, drift.csv, a database timestamp) and a drift
    is 1 - a cosine: values beyond them are refused at decode, before any consumer sees them."""
    with pytest.raises(DecodeError, match=r"field 't_capture': expected a finite float in \[0, "):
        decode_with(Frame("cam0", 1, 0.0, 2, 2, b""), t_capture=-1.0)
    with pytest.raises(DecodeError, match=r"field 't_capture'"):
        decode_with(Frame("cam0", 1, 0.0, 2, 2, b""), t_capture=1e300)
    record = MetricsRecord("cam0", 1, 1.0, 1.0, "w", "m", 0.5, 0.5, vector=np.ones(3, np.float32))
    with pytest.raises(DecodeError, match=r"field 'drift': expected None or a finite float in \[0, 2\]"):
        decode_with(record, drift=2.5)
    with pytest.raises(DecodeError, match=r"field 'similarity'"):
        decode_with(record, similarity=-1.5)
    with pytest.raises(DecodeError, match=r"field 'rolling': \['mean'\]"):
        decode_with(record, rolling={"count": 2, "mean": 3.0})


# -- a header's bounds, before it is unpacked (issue #22) -------------------------------------------

FOUR_BYTES = "\U0001d11e"  # a character of 4 bytes in UTF-8: the longest a str can pack to


def largest_headers() -> list[Message]:
    """Messages at the most room their annotations allow: every map full, every name and text at
    its longest in 4-byte characters, every number of 9 bytes."""
    names = [f"{i:04d}".ljust(64, "s") for i in range(4096)]  # stream names: 64 characters (ASCII only)
    counts = {name: -1 if name == "published" else messages.INT64_MAX for name in messages.FrameCounts.__annotations__}
    counts["published"] = messages.INT64_MAX
    name, text = FOUR_BYTES * 1024, FOUR_BYTES * messages.TEXT_MAX
    return [
        Stopped(streams={s: typing.cast(messages.FrameCounts, dict(counts)) for s in names}),
        Ready(name, dict.fromkeys(names, messages.INT64_MAX - 1)),
        Stats(name, names[0], {f"{i:03d}".ljust(64, FOUR_BYTES): messages.INT64_MAX for i in range(256)}),
        Hello("ingest", name, 1000, names[0], text, after=name, model=name, run=name),
        Welcome(name, 1.0, 3, run=name, frames=text, metrics=text),
        Acks({s: {"seq": messages.INT64_MAX - 1, "ended": True} for s in names}),
        Results.of(
            [Skipped(names[i], 0, name, text) for i in range(messages.MAX_NOTES)]
            + [Embedding(names[i], 0, 0.0, name, name) for i in range(messages.MAX_NOTES, messages.MAX_BATCH_NAMES)]
        ),
        Records.of(
            [
                MetricsRecord(
                    names[0],
                    i,
                    0.0,
                    0.0,
                    f"{i}".ljust(1024, FOUR_BYTES),
                    name,
                    None,
                    None,
                    events={f"{'k' * 15}:{j:02d}".ljust(64, "e"): 1e300 for j in range(16)},
                )
                for i in range(messages.MAX_NOTES)
            ]
        ),
    ]


@pytest.mark.parametrize("msg", largest_headers(), ids=lambda m: m.KIND)
def test_the_largest_legal_headers_are_within_the_bounds_and_decode(msg):
    """The bounds are not too tight: a header at the most its annotations allow still decodes."""
    parts = [bytes(p) for p in messages.encode(msg)]
    assert len(parts[0]) <= messages.HEADER_MAX_BYTES
    assert messages._largest_header(type(msg)).size >= len(parts[0])
    back = messages.decode(parts)
    if isinstance(msg, Batch):
        assert same_rows(back.rows(), msg.rows())  # type: ignore[attr-defined]
    else:
        assert back == msg


def test_a_header_past_the_largest_legal_one_is_refused_before_it_is_unpacked():
    """Issue #22: a 60 MB "array of empty arrays" took the core to 4.5 GB and 46 s. Refused on
    its length: no copy, no unpacking."""
    import tracemalloc

    bomb = b"\xdd" + (60 * 2**20).to_bytes(4, "big") + b"\x90" * (60 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match=rf"^a header of {len(bomb)} bytes: no message.s is over"):
            messages.decode([bomb])
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()


def nested_maps(width: int, depth: int) -> bytes:
    """A map of ``width`` maps of ``width`` maps ... ``depth`` deep, distinct keys, empty at the bottom."""
    inner: dict = {}
    for _ in range(depth):
        inner = {f"{i:x}": inner for i in range(width)}
    return msgpack.packb(inner)


@pytest.mark.parametrize(
    "bomb, why",
    [
        # An array claiming 2**32 - 1 entries (msgpack would make room for them all first).
        (b"\xdd\xff\xff\xff\xff" + b"\x90" * 1000, "exceeds max_array_len"),
        # A map of more entries than any header's.
        (b"\xdf\x00\x01\x00\x00" + b"\xa1a\xc0" * 1000, "exceeds max_map_len"),
        # A str longer than any field's, a bin and an ext where no header has any.
        (b"\x81\xa1v\xdb\x00\x01\x00\x00" + b"x" * 65536, "exceeds max_str_len"),
        (b"\x81\xa1v\xc6\x00\x00\x01\x00" + b"x" * 256, "exceeds max_bin_len"),
        (b"\x81\xa1v\xc7\x10\x01" + b"x" * 16, "exceeds max_ext_len"),
        # Maps within maps as deep as they go.
        (b"\x81\xa1a" * 100_000 + b"\x80", "not msgpack"),
    ],
    ids=["array", "map", "str", "bin", "ext", "deep"],
)
def test_what_no_header_holds_is_refused_as_it_is_unpacked(bomb, why):
    with pytest.raises(DecodeError, match=why):
        messages.decode([bomb])


def test_a_map_bomb_within_the_bound_costs_a_bounded_memory():
    """The costliest header that passes the length bound: maps of empty maps, each key distinct.
    Unpacked, it takes some 20 times its bytes (tens of MB), once: not the 4.5 GB of issue #22."""
    import tracemalloc

    bomb = nested_maps(400, 2)  # 400 x 400 empty maps: about 1 MB, within the bound
    assert len(bomb) <= messages.HEADER_MAX_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="schema version"):
            messages.decode([bomb])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * messages.HEADER_MAX_BYTES, f"{peak / 2**20:.0f} MB"


def test_every_header_field_has_a_packed_size_or_the_module_does_not_import():
    """A header's bound comes from its fields' annotations: one without a bound has none."""
    from encoders.shared.validation import MaxItems, packed

    for hint in (str, bytes, dict[typing.Annotated[str, MaxLen(3)], int], list[int]):
        with pytest.raises(TypeError):
            packed(hint)
    bounded = typing.Annotated[dict[typing.Annotated[str, MaxLen(3)], int], MaxItems(2)]
    assert packed(bounded).size == 1 + 2 * (1 + 12 + 9) and packed(bounded).most_entries == 2
    assert messages.largest_part(32 * 2**20) == 32 * 2**20
    assert messages.largest_part() == messages.HEADER_MAX_BYTES
    assert messages.largest_part(2**20, batches=True) == messages.BATCH_PART_MAX
