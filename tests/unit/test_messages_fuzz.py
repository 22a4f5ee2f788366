"""decode fed anything: nothing but DecodeError comes out, what decodes is what its
annotations say, and every valid message crosses the wire unchanged.

Property-based (hypothesis). The number of examples comes from the loaded profile: a few
seconds' worth in ``make test``, far more with HYPOTHESIS_PROFILE=fuzz.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, get_type_hints

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from encoders.shared import messages
from encoders.shared.messages import DecodeError, Message

from .message_strategies import any_message, assert_conforms, assert_same, msgpack_values, near_misses, pack

KINDS = sorted(messages.MESSAGE_TYPES)
# Every header field of every kind, and the vector's length: the names worth spoiling.
FIELD_NAMES = sorted(
    {f.name for cls in messages.MESSAGE_TYPES.values() for f in dataclasses.fields(cls)} | {"dim", "n", "v", "k"}
)
# Values just past what some field allows, besides any msgpack value at all.
NASTY = (
    st.sampled_from(
        [
            *(math.nan, math.inf, -math.inf, 0.5, -0.0, 1e308),
            *(True, False, None, [], {}, [1], {"x": 1}, b"cam0"),
            *(-2, -1, 0, 1, 65535, 65536, 2**63 - 2, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)),
            *("", "cam 0", "c" * 64, "c" * 65, "x" * 1024, "x" * 1025, "x" * 4096, "x" * 4097),
        ]
    )
    | msgpack_values
)
FUZZ = settings(deadline=None)  # a deadline flakes on a busy machine; the profile sets the rest


def decoded(parts: list[Any], with_topic: bool) -> Message | None:
    """The message, checked against its annotations, or None for a DecodeError. Anything
    else that decode raises fails the test."""
    try:
        msg = messages.decode(parts, with_topic=with_topic)
    except DecodeError:
        return None
    assert_conforms(msg)
    return msg


@FUZZ
@given(parts=st.lists(st.binary(max_size=64), max_size=5), with_topic=st.booleans())
def test_arbitrary_parts(parts, with_topic):
    decoded(parts, with_topic)


@FUZZ
@given(
    header=msgpack_values
    | st.fixed_dictionaries(
        {"v": st.just(messages.SCHEMA_VERSION) | msgpack_values, "k": st.sampled_from(KINDS) | msgpack_values}
    ).flatmap(lambda head: st.dictionaries(st.sampled_from(FIELD_NAMES), msgpack_values).map(lambda f: head | f)),
    buffers=st.lists(st.binary(max_size=64), max_size=2),
    with_topic=st.booleans(),
)
def test_arbitrary_msgpack_headers(header, buffers, with_topic):
    decoded([b"topic"] * with_topic + [pack(header), *buffers], with_topic)


@FUZZ
@given(msg=any_message(), data=st.data(), with_topic=st.booleans())
def test_a_valid_message_with_one_thing_spoilt(msg, data, with_topic):
    """Close to real messages, where the checks matter most: a field given a value just
    outside its annotation (or any value at all), a field removed or added, a buffer
    replaced, a vector value made NaN or infinite."""
    parts = [bytes(p) for p in messages.encode(msg, with_topic=with_topic)]
    at = 1 if with_topic else 0
    header = msgpack.unpackb(parts[at])
    hints = get_type_hints(type(msg), include_extras=True)
    how = data.draw(st.sampled_from(["field", "field", "field", "remove", "add", "buffer", "vector"]))
    if how == "remove":
        del header[data.draw(st.sampled_from(sorted(header)))]
    elif how == "add":
        header[data.draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))] = data.draw(NASTY)
    elif how == "buffer" and len(parts) > at + 1:
        parts[data.draw(st.integers(at + 1, len(parts) - 1))] = data.draw(st.binary(max_size=64))
    elif how == "vector" and isinstance(msg, messages.Batch) and msg.vectors.size:
        vectors = np.array(msg.vectors, dtype=np.float32)
        vectors.flat[data.draw(st.integers(0, vectors.size - 1))] = data.draw(st.sampled_from([np.nan, np.inf]))
        parts[-1] = vectors.tobytes()
    elif how == "vector" and getattr(msg, "vector", np.zeros(0)).size:
        vector = np.array(msg.vector, dtype=np.float32)
        vector[data.draw(st.integers(0, vector.size - 1))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        parts[at + 1] = vector.tobytes()
    elif fields := sorted(set(header) - {"v", "k", "dim"}):  # a Heartbeat has none
        name = data.draw(st.sampled_from(fields))
        header[name] = data.draw(near_misses(hints[name]) | NASTY if name in hints else NASTY)  # a batch's n: no field
    parts[at] = pack(header)
    decoded(parts, with_topic)


@FUZZ
@given(msg=any_message(), with_topic=st.booleans())
def test_every_valid_message_crosses_the_wire_unchanged(msg, with_topic):
    parts = [bytes(p) for p in messages.encode(msg, with_topic=with_topic)]
    back = decoded(parts, with_topic)
    assert back is not None, f"a valid {msg.KIND} does not decode"
    assert_same(msg, back)
