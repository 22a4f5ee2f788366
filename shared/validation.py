"""Checking values that arrive from outside against the type annotations they are declared with.
(One concept, the checks messages.py's annotations stand for: longer than 350 lines for that.)

``messages.py`` declares every field of every message with its type, and its bounds as
``Annotated`` markers (``Range``, ``MaxLen``, ``Matches``, ``MaxItems``). ``checker(hint)``
turns one such annotation into a function that takes a value just unpacked from msgpack and
returns the value to keep, or raises ``Invalid`` saying what was expected:

- ``int``: an int, never a bool (msgpack keeps them apart; Python does not);
- ``float``: finite; an int is taken and becomes a float;
- ``str``, ``bytes``, ``bool``, ``None``, ``X | Y`` (the first that takes the value), ``Literal[...]``;
- ``dict[K, V]``: a map whose keys and values are checked;
- a ``TypedDict`` (total or not): its declared keys are checked; keys it does not declare
  are dropped, as decode drops header fields it does not know (see ``_typed_dict``);
- ``Annotated[T, marker, ...]``: T, within the markers' bounds.

Written here rather than taken from a validation library (pydantic, msgspec): every service
decodes messages, and none should need one more dependency for it.

The functions are built once per annotation, at import, because decode runs for every frame
of every camera: checking a field then costs one call and a comparison or two, no look at
the annotation. An annotation this module cannot check raises TypeError when it is built,
so a new field with an unchecked type fails at import, not on the wire.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

# Takes a value as msgpack unpacked it; returns the value to keep or raises Invalid.
Check = Callable[[Any], Any]

FLOAT_MAX = sys.float_info.max


class Invalid(ValueError):
    """A value that is not what its annotation says; the text says what was expected."""


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi, either end open when None (an int or a float)."""

    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class MaxLen:
    """At most ``n`` characters (str) or bytes (bytes)."""

    n: int


@dataclass(frozen=True)
class Matches:
    """A str the whole of which matches ``pattern``; ``what`` names it in error messages."""

    pattern: re.Pattern[str]
    what: str


@dataclass(frozen=True)
class MaxItems:
    """A map of at most ``n`` entries."""

    n: int


def show(value: Any) -> str:
    """A short description of a bad value for an error message: never the whole of a long
    string, never a walk through a nested container (cheap, and no recursion limit to hit)."""
    if isinstance(value, str | bytes):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, list | tuple | dict):
        return f"a {'map' if isinstance(value, dict) else 'list'} of {len(value)}"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def _fail(expected: str, value: Any) -> NoReturn:
    raise Invalid(f"expected {expected}, got {show(value)}")


def checker(hint: Any) -> Check:
    """The check of one annotation (already evaluated: see ``typing.get_type_hints``)."""
    return _build(hint)[0]


def _build(hint: Any, marks: tuple[Any, ...] = ()) -> tuple[Check, str]:
    """(check, what it expects, in words)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *more = typing.get_args(hint)
        return _build(base, marks + tuple(more))
    if origin in (types.UnionType, typing.Union):
        if marks:
            raise TypeError(f"put the bounds inside the union, on its member: {hint!r}")
        return _union(typing.get_args(hint))
    if origin is dict:
        key, value = typing.get_args(hint)
        return _map(key, value, **_marks(hint, marks, MaxItems))
    if typing.is_typeddict(hint):
        if marks:
            raise TypeError(f"a TypedDict takes no bounds: {hint!r}")
        return _typed_dict(hint)
    if origin is typing.Literal and not marks:
        return _literal(typing.get_args(hint))
    if hint is int:
        return _int(**_marks(hint, marks, Range))
    if hint is float:
        return _float(**_marks(hint, marks, Range))
    if hint is str:
        return _str(**_marks(hint, marks, MaxLen, Matches))
    if hint is bytes:
        return _bytes(**_marks(hint, marks, MaxLen))
    if hint is bool and not marks:
        return _exact(bool, "a bool")
    if hint is type(None) and not marks:
        return _exact(type(None), "None")
    raise TypeError(f"no check for the annotation {hint!r} (bounds {marks!r})")


def _marks(hint: Any, marks: tuple[Any, ...], *allowed: type) -> dict[str, Any]:
    """The markers of an Annotated as keyword arguments of the builder that takes them."""
    out: dict[str, Any] = {}
    for mark in marks:
        if type(mark) not in allowed:
            raise TypeError(f"{mark!r} does not apply to {hint!r}")
        out[_KEYWORD[type(mark)]] = mark
    return out


_KEYWORD = {Range: "bounds", MaxLen: "maxlen", Matches: "matches", MaxItems: "maxitems"}


def _literal(allowed: tuple[Any, ...]) -> tuple[Check, str]:
    """One of a few values (of str, int or bool: exact types, so True is not 1)."""
    choices = frozenset((type(a), a) for a in allowed)
    expected = "one of " + ", ".join(repr(a) for a in allowed)

    def check(value: Any) -> Any:
        if type(value) in (str, int, bool) and (type(value), value) in choices:  # a list is unhashable
            return value
        _fail(expected, value)

    return check, expected


def _exact(kind: type, expected: str) -> tuple[Check, str]:
    def check(value: Any) -> Any:
        if type(value) is kind:
            return value
        _fail(expected, value)

    return check, expected


def _bounds(what: str, lo: float, hi: float, unbounded: tuple[float, float]) -> str:
    if (lo, hi) == unbounded:
        return what
    if hi == unbounded[1]:
        return f"{what} >= {lo}"
    if lo == unbounded[0]:
        return f"{what} <= {hi}"
    return f"{what} in [{lo}, {hi}]"


def _int(bounds: Range | None = None) -> tuple[Check, str]:
    lo = bounds.lo if bounds and bounds.lo is not None else -float("inf")
    hi = bounds.hi if bounds and bounds.hi is not None else float("inf")
    expected = _bounds("an int", lo, hi, (-float("inf"), float("inf")))

    def check(value: Any) -> Any:
        # type() is, not isinstance: True is an int to Python, not to a sequence number.
        if type(value) is int and lo <= value <= hi:
            return value
        _fail(expected, value)

    return check, expected


def _float(bounds: Range | None = None) -> tuple[Check, str]:
    # Finite bounds even when none is given: one chained comparison then turns away NaN
    # (no comparison holds for it) and both infinities.
    lo = max(bounds.lo, -FLOAT_MAX) if bounds and bounds.lo is not None else -FLOAT_MAX
    hi = min(bounds.hi, FLOAT_MAX) if bounds and bounds.hi is not None else FLOAT_MAX
    expected = _bounds("a finite float", lo, hi, (-FLOAT_MAX, FLOAT_MAX))

    def check(value: Any) -> Any:
        kind = type(value)
        if kind is float:
            if lo <= value <= hi:
                return value
        elif kind is int and lo <= value <= hi:
            return float(value)
        _fail(expected, value)

    return check, expected


def _str(maxlen: MaxLen | None = None, matches: Matches | None = None) -> tuple[Check, str]:
    if matches is not None:
        fullmatch = matches.pattern.fullmatch
        limit = maxlen.n if maxlen else sys.maxsize
        expected = matches.what

        def check(value: Any) -> Any:
            if type(value) is str and len(value) <= limit and fullmatch(value):
                return value
            _fail(expected, value)

        return check, expected
    if maxlen is None:
        return _exact(str, "a str")
    n = maxlen.n
    expected = f"a str of at most {n} characters"

    def check_len(value: Any) -> Any:
        if type(value) is str and len(value) <= n:
            return value
        _fail(expected, value)

    return check_len, expected


def _bytes(maxlen: MaxLen | None = None) -> tuple[Check, str]:
    if maxlen is None:
        return _exact(bytes, "bytes")
    n = maxlen.n
    expected = f"at most {n} bytes"

    def check(value: Any) -> Any:
        if type(value) is bytes and len(value) <= n:
            return value
        _fail(expected, value)

    return check, expected


def _union(members: tuple[Any, ...]) -> tuple[Check, str]:
    built = [_build(m) for m in members if m is not type(None)]
    optional = len(built) < len(members)
    expected = " or ".join((["None"] if optional else []) + [what for _check, what in built])
    if optional and len(built) == 1:
        # X | None, the common case (similarity, drift, published): no loop, no second try.
        inner = built[0][0]

        def check_optional(value: Any) -> Any:
            if value is None:
                return None
            try:
                return inner(value)
            except Invalid:
                _fail(expected, value)

        return check_optional, expected
    checks = [c for c, _what in built]

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        for one in checks:
            try:
                return one(value)
            except Invalid:
                pass
        _fail(expected, value)

    return check, expected


def _map(key: Any, value: Any, maxitems: MaxItems | None = None) -> tuple[Check, str]:
    check_key, key_what = _build(key)
    check_value, value_what = _build(value)
    limit = maxitems.n if maxitems else sys.maxsize
    expected = f"a map of at most {limit} entries" if maxitems else "a map"

    def check(raw: Any) -> Any:
        if type(raw) is not dict or len(raw) > limit:
            _fail(expected, raw)
        out = {}
        for k, v in raw.items():
            try:
                name = check_key(k)
            except Invalid:
                raise Invalid(f"a key: expected {key_what}, got {show(k)}") from None
            try:
                out[name] = check_value(v)
            except Invalid:
                raise Invalid(f"[{name!r}]: expected {value_what}, got {show(v)}") from None
        return out

    return check, expected


def _typed_dict(td: Any) -> tuple[Check, str]:
    fields = {name: _build(hint) for name, hint in typing.get_type_hints(td, include_extras=True).items()}
    checks = {name: c for name, (c, _what) in fields.items()}
    required = frozenset(td.__required_keys__)
    expected = f"a map of {', '.join(fields)}"

    def check(raw: Any) -> Any:
        if type(raw) is not dict:
            _fail(expected, raw)
        out = {}
        try:
            for k, v in raw.items():
                one = checks.get(k)
                # A key the shape does not declare is dropped, not refused: a sender that counts
                # one thing more (a newer service) must not cost the record it rides on, and the
                # consumer sees only what the shape promises. Header fields are treated alike.
                if one is not None:
                    out[k] = one(v)
        except Invalid:
            raise Invalid(f"[{k!r}]: expected {fields[k][1]}, got {show(v)}") from None
        if required and not required <= out.keys():
            raise Invalid(f"{expected}: {sorted(required - out.keys())[0]!r} is missing")
        return out

    return check, expected


# -- how much room a value can take on the wire ------------------------------------------------
# What bounds the unpacking of a header before anything in it is checked (messages.decode): a
# header is unpacked whole, so its limits have to be known first, and they are worked out from
# the same annotations, so that a new field's bound is the unpacker's too.

UTF8_MAX = 4  # bytes a character takes in UTF-8 at most: a str of n characters packs to <= 4n bytes
NUMBER_BYTES = 9  # an int (int64 or uint64) or a float (float64), packed: a type byte and 8


@dataclass(frozen=True)
class Packed:
    """The most room a value of one annotation takes once msgpack has packed it."""

    size: int  # bytes, in all
    longest_str: int  # bytes of its longest str (a map's keys included)
    most_entries: int  # entries of its largest map

    def __or__(self, other: Packed) -> Packed:
        """The larger of two, each measure on its own (a union, or the largest of several messages)."""
        return Packed(
            max(self.size, other.size),
            max(self.longest_str, other.longest_str),
            max(self.most_entries, other.most_entries),
        )


def str_header(n: int) -> int:
    """Bytes of msgpack's header of a str of ``n`` bytes (fixstr, str8, str16, str32)."""
    return 1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5


def map_header(n: int) -> int:
    """Bytes of msgpack's header of a map of ``n`` entries (fixmap, map16, map32)."""
    return 1 if n < 16 else 3 if n < 65536 else 5


def packed_str(text: str) -> Packed:
    """A str known in advance (a field's name, a key of a TypedDict)."""
    n = len(text.encode())
    return Packed(str_header(n) + n, n, 0)


def packed(hint: Any) -> Packed:
    """The most room a value of ``hint`` takes packed (the annotation as ``checker`` takes it).

    TypeError for one without a bound (a str without MaxLen, a map without MaxItems): a header
    field must have one, or the header's own bound could not be known.
    """
    return _packed(hint, ())


def _packed(hint: Any, marks: tuple[Any, ...]) -> Packed:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *more = typing.get_args(hint)
        return _packed(base, marks + tuple(more))
    if origin in (types.UnionType, typing.Union):
        out = Packed(1, 0, 0)  # None
        for member in typing.get_args(hint):
            out = out | _packed(member, ())
        return out
    if origin is dict:
        limit = next((m.n for m in marks if isinstance(m, MaxItems)), None)
        if limit is None:
            raise TypeError(f"a map without MaxItems has no packed size: {hint!r}")
        key, value = (_packed(h, ()) for h in typing.get_args(hint))
        entry = key.size + value.size
        return Packed(
            map_header(limit) + limit * entry,
            max(key.longest_str, value.longest_str),
            max(limit, key.most_entries, value.most_entries),
        )
    if typing.is_typeddict(hint):
        fields = typing.get_type_hints(hint, include_extras=True)
        out = Packed(0, 0, len(fields))
        size = map_header(len(fields))
        for name, field_hint in fields.items():
            key, value = packed_str(name), _packed(field_hint, ())
            size += key.size + value.size
            out = out | key | value
        return Packed(size, out.longest_str, out.most_entries)
    if origin is typing.Literal:
        out = Packed(0, 0, 0)
        for choice in typing.get_args(hint):
            out = out | (packed_str(choice) if isinstance(choice, str) else Packed(NUMBER_BYTES, 0, 0))
        return out
    if hint in (int, float):
        return Packed(NUMBER_BYTES, 0, 0)
    if hint in (bool, type(None)):
        return Packed(1, 0, 0)
    if hint in (str, bytes):
        limit = next((m.n for m in marks if isinstance(m, MaxLen)), None)
        if limit is None:
            raise TypeError(f"a {hint.__name__} without MaxLen has no packed size: {hint!r} {marks!r}")
        if hint is bytes:
            return Packed(5 + limit, 0, 0)  # bin8/16/32: a header of at most 5 bytes
        n = limit * UTF8_MAX
        return Packed(str_header(n) + n, n, 0)
    raise TypeError(f"no packed size for the annotation {hint!r}")
