"""What a person types to narrow a search (runs, a stream, a time range, a frame), parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)(?:\s+ago)?", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class FilterError(ValueError):
    """Input that cannot be a filter; the message says what is expected."""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An aware datetime from ISO 8601 ('2026-01-07', '2026-01-07 14:30', '...T14:30:22Z'),
    a time ago ('90s', '15m', '2h', '3d', '1w', optionally followed by 'ago') or 'now'.
    A time without a zone is local time."""
    now = now or datetime.now(UTC)
    value = text.strip()
    if value.lower() == "now":
        return now
    m = _RELATIVE.fullmatch(value)
    if not m:
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            raise FilterError(f"not a time: {text!r} (give e.g. 2026-01-07T14:30, 2026-01-07, 2h or 30m ago)") from None
    try:
        if m:
            return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
        return t if t.tzinfo is not None else t.astimezone()  # naive: local time
    except (OverflowError, ValueError):  # '99999999999w' ago; 0001-01-01 or 9999-12-31 made local
        raise FilterError(f"a time out of range: {text[:40]!r} (dates go from year 1 to 9999)") from None


@dataclass(frozen=True)
class FrameRef:
    """RUN:SEQ or RUN:STREAM:SEQ; RUN is a run's id or name."""

    run: str
    stream: str | None
    seq: int


def parse_frame_ref(text: str) -> FrameRef:
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise FilterError(f"--frame takes RUN:SEQ or RUN:STREAM:SEQ, got {text!r}")
    raw = parts[-1].strip()
    # ASCII digits, within a bigint: int() takes '²' and any length; the database neither.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) >= 2**63:
        raise FilterError(f"--frame {text[:300]!r}: the sequence number {raw[:40]!r} is not a whole number")
    seq = int(raw)
    return FrameRef(parts[0], parts[1] if len(parts) == 3 else None, seq)


@dataclass(frozen=True)
class Filters:
    """Conditions on frames (and scene changes). None = no condition."""

    run_ids: tuple[int, ...] | None = None
    stream: str | None = None
    since: datetime | None = None  # captured at or after
    until: datetime | None = None  # captured before

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise FilterError(f"--until ({self.until.isoformat()}) is not after --since ({self.since.isoformat()})")

    @property
    def any(self) -> bool:
        return self.run_ids is not None or self.stream is not None or self.since is not None or self.until is not None

    def with_runs(self, run_ids: tuple[int, ...] | None) -> Filters:
        return replace(self, run_ids=run_ids)
