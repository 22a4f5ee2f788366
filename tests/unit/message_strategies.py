"""Hypothesis strategies for messages, derived from their annotations, and a check that a
message satisfies them: what test_messages_fuzz and test_consumers_fuzz share.

The strategies read the same annotations and bound markers that decode checks, so a new
field or a new bound is generated and tested without touching this file. The check,
``assert_conforms``, is written apart from ``shared/validation.py`` on purpose: a test that
asked the checker whether the checker's output is right would prove nothing.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Annotated, Any

import msgpack
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from encoders.shared import messages
from encoders.shared.messages import Message
from encoders.shared.validation import Matches, MaxItems, MaxLen, Range

# -- valid values, from annotations ---------------------------------------------------------


def _marks(hint: Any) -> tuple[Any, dict[type, Any]]:
    """(the plain type, its markers by class)."""
    if typing.get_origin(hint) is Annotated:
        base, *marks = typing.get_args(hint)
        return base, {type(m): m for m in marks}
    return hint, {}


def _long_text(n: int) -> st.SearchStrategy[str]:
    """Strings at (or just under) their length limit: one character repeated is cheap to make."""
    return st.builds(lambda c, k: c * k, st.characters(codec="utf-8"), st.integers(max(0, n - 2), n))


def values(hint: Any) -> st.SearchStrategy[Any]:
    """Any value the annotation allows, the edges included (hypothesis favours them)."""
    base, marks = _marks(hint)
    origin = typing.get_origin(base)
    if origin in (types.UnionType, typing.Union):
        return st.one_of([values(m) for m in typing.get_args(base)])
    if origin is dict:
        key, value = typing.get_args(base)
        limit = marks[MaxItems].n if MaxItems in marks else 20
        # Mostly small maps; now and then a full one (its keys as the key's annotation allows).
        full = st.lists(
            st.tuples(values(key), values(value)), min_size=limit, max_size=limit, unique_by=lambda kv: kv[0]
        ).map(dict)
        return st.dictionaries(values(key), values(value), max_size=min(limit, 10)) | full
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(base))
    if typing.is_typeddict(base):
        hints = typing.get_type_hints(base, include_extras=True)
        return st.fixed_dictionaries(
            {k: values(h) for k, h in hints.items() if k in base.__required_keys__},
            optional={k: values(h) for k, h in hints.items() if k not in base.__required_keys__},
        )
    if base is int:
        r = marks.get(Range, Range())
        return st.integers(r.lo, r.hi)
    if base is float:
        r = marks.get(Range, Range())
        return st.floats(r.lo, r.hi, allow_nan=False, allow_infinity=False)
    if base is str:
        if Matches in marks:
            return st.from_regex(marks[Matches].pattern, fullmatch=True)
        n = marks[MaxLen].n if MaxLen in marks else 100
        return st.text(max_size=min(n, 100)) | _long_text(n)
    if base is bool:
        return st.booleans()
    if base is type(None):
        return st.none()
    if base is bytes:
        return st.binary(max_size=200)
    raise TypeError(f"no strategy for {hint!r}")


WRONG_TYPES: list[Any] = [None, True, "1", b"1", [], {}, 1.5]


def near_miss_examples(hint: Any) -> list[Any]:
    """Values just outside what the annotation allows: the wrong type, one past a bound, a map
    with one bad entry or one too many, a typed map with a key it does not declare (which
    decode drops). In a union, a near miss of one member may be a fine value of another."""
    base, marks = _marks(hint)
    origin = typing.get_origin(base)
    if origin in (types.UnionType, typing.Union):
        members = [m for m in typing.get_args(base) if m is not type(None)]
        return [v for m in members for v in near_miss_examples(m) if v is not None]
    if origin is dict:
        key, value = typing.get_args(base)
        limit = marks[MaxItems].n if MaxItems in marks else 20
        # Only str and bytes keys get past msgpack (we unpack with strict_map_key).
        keys = [k for k in near_miss_examples(key) if isinstance(k, str | bytes)]
        return [
            *WRONG_TYPES,
            *({k: 0} for k in keys),
            *({"c": v} for v in near_miss_examples(value)),
            {f"c{i}": 0 for i in range(limit + 1)},
        ]
    if origin is typing.Literal:
        return [*WRONG_TYPES, "not one of them"]
    if typing.is_typeddict(base):
        hints = typing.get_type_hints(base, include_extras=True)
        return [
            *WRONG_TYPES,
            {"not declared": 1},
            *({k: v} for k, h in hints.items() for v in near_miss_examples(h)),
        ]
    r = marks.get(Range, Range())
    if base is int:
        past = ([r.lo - 1] if r.lo is not None else []) + ([r.hi + 1] if r.hi is not None else [])
        return [*WRONG_TYPES, False, 1.0, *(b for b in past if -(2**63) <= b < 2**64)]  # what msgpack packs
    if base is float:
        below = [r.lo - 1, math.nextafter(r.lo, -math.inf)] if r.lo is not None else []
        return [*(w for w in WRONG_TYPES if w != 1.5), math.nan, math.inf, -math.inf, *below]
    if base is str:
        n = marks[MaxLen].n if MaxLen in marks else 64
        misses = [*WRONG_TYPES, "x" * (n + 1)]
        if Matches in marks:
            misses += ["", "cam 0", "cam/0", "c" * 65, "cam\n", "caméra"]
        return misses
    return WRONG_TYPES


def near_misses(hint: Any) -> st.SearchStrategy[Any]:
    """A near miss (above), or, for a map, a valid map with a near miss's entry added."""
    examples = near_miss_examples(hint)
    base = _marks(hint)[0]
    if typing.get_origin(base) is dict or typing.is_typeddict(base):
        bad_entries = [e for e in examples if isinstance(e, dict) and e]
        return st.sampled_from(examples) | st.tuples(values(hint), st.sampled_from(bad_entries)).map(
            lambda t: {**t[0], **t[1]}
        )
    return st.sampled_from(examples)


def vectors(dims: st.SearchStrategy[int] | None = None) -> st.SearchStrategy[np.ndarray]:
    """float32 vectors of any finite values (huge and tiny ones too), of ``dims`` values (any
    number up to 1024 by default)."""
    # Mostly values an embedding holds; any finite float32 too, the largest and the tiniest.
    elements = st.floats(-1, 1, width=32) | st.floats(width=32, allow_nan=False, allow_infinity=False)
    return (st.integers(0, 1024) if dims is None else dims).flatmap(
        lambda dim: arrays(np.float32, dim, elements=elements)
    )


def message_of(cls: type[Any], **overrides: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid messages of ``cls`` (or rows of a batch: Embedding, Skipped); ``overrides`` replace the
    strategy of the fields they name (a batch's: of its rows, where they have them)."""
    if cls is messages.Results:
        return results(**overrides)
    if cls is messages.Records:
        return records(**overrides)
    if cls is messages.Captured:
        notes = st.lists(message_of(messages.CaptureNote), max_size=8, unique_by=lambda r: r.id)
        return notes.map(messages.Captured.of)
    if cls is messages.Assigned:
        return st.lists(message_of(messages.Assignment), max_size=8).map(messages.Assigned.of)
    if cls in (messages.WantPictures, messages.NoPictures):
        return st.builds(
            cls.of,
            overrides.get("stream", values(messages.StreamName)),
            st.lists(overrides.get("seq", values(messages.Seq)), max_size=8),
        )
    if cls is messages.Pictures:
        return pictures(**overrides)
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            fields[f.name] = overrides[f.name]
        elif f.name == "vector":
            fields[f.name] = vectors()
        elif f.name == "jpeg":
            fields[f.name] = st.binary(max_size=2000)
        else:
            fields[f.name] = values(hints[f.name])
    return st.builds(cls, **fields)


# Levels travel as float32 in a batch's columns: values it holds exactly, or None.
LEVELS = st.none() | st.floats(0, 255, width=32)
_BATCH_STREAMS = st.sampled_from(["cam0", "cam1"]) | values(messages.StreamName)
_WORKERS = st.sampled_from(["w1", "w2"]) | values(messages.Name)


@st.composite
def results(draw: st.DrawFn, **overrides: st.SearchStrategy[Any]) -> messages.Results:
    """A Results of a few rows, embedded and skipped, as a worker makes one (Results.of)."""
    streams = overrides.get("stream", _BATCH_STREAMS)
    seqs = overrides.get("seq", values(messages.Seq))
    dim = draw(st.integers(0, 16))
    worker, model = draw(values(messages.Name)), draw(values(messages.Name))
    t_encoded = draw(values(messages.Time))
    rows: list[messages.Embedding | messages.Skipped] = []
    for _ in range(draw(st.integers(0, 8))):
        stream, seq = draw(streams), draw(seqs)
        if draw(st.booleans()):
            rows.append(
                messages.Embedding(
                    stream, seq, draw(overrides.get("t_capture", values(messages.Time))), worker, model, t_encoded,
                    draw(vectors(st.just(dim))), draw(st.binary(max_size=50)), draw(LEVELS), draw(LEVELS),
                )
            )  # fmt: skip
        else:
            rows.append(messages.Skipped(stream, seq, worker, draw(values(messages.Text))))
    return messages.Results.of(rows)


@st.composite
def pictures(draw: st.DrawFn, **overrides: st.SearchStrategy[Any]) -> messages.Pictures:
    """A Pictures of a few JPEGs of one stream, as an ingest sends one."""
    stream = draw(overrides.get("stream", values(messages.StreamName)))
    seqs = {k: v for k, v in overrides.items() if k == "seq"}
    frames = draw(st.lists(message_of(messages.Frame, stream=st.just(stream), **seqs), max_size=5))
    return messages.Pictures.of(stream, frames, draw(st.booleans()))


# A Rolling travels whole or not at all (the core's always has every key: drift.py).
_ROLLING: st.SearchStrategy[messages.Rolling] = st.just(messages.Rolling()) | st.fixed_dictionaries(
    {"count": values(messages.Count), **{k: values(messages.Drift | None) for k in ("mean", "std", "min", "max")}}
).map(lambda d: typing.cast(messages.Rolling, d))


@st.composite
def records(draw: st.DrawFn, **overrides: st.SearchStrategy[Any]) -> messages.Records:
    """A Records of a few consecutive records of one stream, as the core makes one (Records.of)."""
    stream = draw(overrides.get("stream", values(messages.StreamName)))
    core, model = draw(values(messages.Name)), draw(values(messages.Name))
    dim = draw(st.integers(0, 16))
    n = draw(st.integers(1, 6))
    seqs = sorted(draw(st.sets(overrides.get("seq", values(messages.Seq)), min_size=n, max_size=n)))
    hints = typing.get_type_hints(messages.MetricsRecord, include_extras=True)
    rows = [
        messages.MetricsRecord(
            stream=stream,
            seq=seq,
            t_capture=draw(values(hints["t_capture"])),
            t_encoded=draw(values(hints["t_encoded"])),
            worker=draw(_WORKERS),
            model=model,
            similarity=draw(values(hints["similarity"])),
            drift=draw(values(hints["drift"])),
            rolling=draw(_ROLLING),
            fps=draw(values(hints["fps"])),
            counts=draw(values(hints["counts"])),
            scene_change=draw(st.booleans()),
            t_metrics=draw(values(hints["t_metrics"])),
            core=core,
            vector=draw(vectors(st.just(dim))),
            thumbnail=draw(st.binary(max_size=50)),
            brightness=draw(LEVELS),
            contrast=draw(LEVELS),
            events=draw(values(hints["events"])),
        )
        for seq in seqs
    ]
    return messages.Records.of(rows)


def any_message(**overrides: st.SearchStrategy[Any]) -> st.SearchStrategy[Message]:
    """A valid message of any kind (overrides apply to the kinds that have those fields)."""
    return st.one_of(
        [
            message_of(cls, **{k: v for k, v in overrides.items() if k in cls.__dataclass_fields__})
            for cls in messages.MESSAGE_TYPES.values()
        ]
    )


# -- arbitrary input ------------------------------------------------------------------------

# What msgpack can carry: every scalar type (ints to its 64-bit limits, NaN and infinities),
# nested lists and maps (string keys: our decoder refuses other keys at unpacking).
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# -- what a decoded message must be ---------------------------------------------------------


def assert_conforms(msg: Any) -> None:
    """Every field of ``msg`` is what its annotation says; the vector is finite, float32, 1-D. A
    batch: its header fields, and every row of it as the row's own class says."""
    hints = typing.get_type_hints(type(msg), include_extras=True)
    if isinstance(msg, messages.Batch):
        for name in ("columns", "blobs", "vectors", "jpegs"):
            hints.pop(name, None)
        for row in msg.rows():  # type: ignore[attr-defined]
            assert_conforms(row)
    kind = getattr(msg, "KIND", type(msg).__name__)
    for f in dataclasses.fields(msg):
        if f.name not in hints:
            continue
        value = getattr(msg, f.name)
        if f.name == "vector":
            assert isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim == 1
            assert np.isfinite(value).all()
        elif f.name in ("jpeg", "thumbnail"):
            assert type(value) is bytes
        else:
            assert _conforms(value, hints[f.name]), f"{kind}.{f.name} = {value!r} is not {hints[f.name]}"


def _conforms(value: Any, hint: Any) -> bool:
    base, marks = _marks(hint)
    origin = typing.get_origin(base)
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, m) for m in typing.get_args(base))
    if origin is dict:
        key, item = typing.get_args(base)
        return (
            type(value) is dict
            and (MaxItems not in marks or len(value) <= marks[MaxItems].n)
            and all(_conforms(k, key) and _conforms(v, item) for k, v in value.items())
        )
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(base))
    if typing.is_typeddict(base):
        hints = typing.get_type_hints(base, include_extras=True)
        return (
            type(value) is dict
            and set(value) <= set(hints)
            and base.__required_keys__ <= set(value)
            and all(_conforms(v, hints[k]) for k, v in value.items())
        )
    if base is float and not (type(value) is float and math.isfinite(value)):
        return False
    if base is not float and type(value) is not base:
        return False  # exact: a bool is no int
    if Range in marks:
        r = marks[Range]
        if (r.lo is not None and value < r.lo) or (r.hi is not None and value > r.hi):
            return False
    if MaxLen in marks and len(value) > marks[MaxLen].n:
        return False
    return Matches not in marks or marks[Matches].pattern.fullmatch(value) is not None


def assert_same(a: Any, b: Any) -> None:
    """Equal messages, field by field (a vector compares by value); batches row by row."""
    assert type(a) is type(b)
    if isinstance(a, messages.Batch):
        rows_a, rows_b = a.rows(), b.rows()  # type: ignore[attr-defined]
        assert len(rows_a) == len(rows_b)
        for x, y in zip(rows_a, rows_b, strict=True):
            assert_same(x, y)
        return
    kind = getattr(a, "KIND", type(a).__name__)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y, f"{kind}.{f.name}: {x!r} != {y!r}"
