"""What the drain (stopping.py) and the reporter (report.py) read of the core, read-only: what is
waiting, held, in workers' hands, unsettled, and the counts the core's Stats carry.

``Progress`` is the view they are given; the core's own (service.py) reads its parts when asked,
and a test hands them plain values (``Snapshot``). Neither reaches into the core: each returns
what it decided (stopping.py: ``GiveUp``, then ``Finish`` or ``Wait``; report.py: the Stats to
publish), and the core does it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class OpenIngest:
    """An ingest whose capture has not ended."""

    stream: str
    stop_sent: float | None  # when it was told to Stop (None: not yet)


@dataclass(frozen=True)
class StreamProgress:
    """One stream, as its Stats and its log line say it."""

    name: str
    totals: Mapping[str, Any]  # published, embedded, dropped, skipped, lost, late ... (streams.py)
    fps: float  # embedded a second, lately
    queued: int  # frames numbered, waiting for a worker
    outcomes_waiting: int  # outcomes held behind a missing one
    forced: int  # given up: more than max_pending waited
    clock_offset: float | None  # its ingest's clock against the core's (clocks.py); ahead: > 0


class Progress(Protocol):
    """The core's progress, read-only."""

    # -- what the drain reads
    @property
    def open_ingests(self) -> Sequence[OpenIngest]: ...
    @property
    def frames_waiting(self) -> int: ...  # numbered, waiting for a worker
    @property
    def workers(self) -> int: ...  # connected
    @property
    def in_use(self) -> int: ...  # frames in workers' hands
    @property
    def unsettled(self) -> Sequence[str]: ...  # streams whose every outcome has not gone out
    @property
    def records(self) -> Mapping[str, int] | None: ...  # held for the recorder (delivery.py); None: no recorder
    @property
    def records_settled(self) -> bool: ...  # every record acknowledged (True without a recorder)
    @property
    def recorder_ready(self) -> bool: ...

    # -- and the reporter
    @property
    def capacity(self) -> int: ...  # the workers' together
    @property
    def counters(self) -> Mapping[str, int]: ...  # the core's own (records, workers_lost_frames)
    @property
    def streams_refused(self) -> int: ...
    @property
    def complaints(self) -> Mapping[str, int]: ...  # bad input, by kind (shared/complaints.py)
    @property
    def refused_results(self) -> int: ...  # of another model or length (models.py)
    @property
    def sessions(self) -> Mapping[str, int]: ...  # by role
    @property
    def streams(self) -> Sequence[StreamProgress]: ...


@dataclass(frozen=True)
class Snapshot:
    """A ``Progress`` of plain values (tests)."""

    open_ingests: Sequence[OpenIngest] = ()
    frames_waiting: int = 0
    workers: int = 0
    in_use: int = 0
    unsettled: Sequence[str] = ()
    records: Mapping[str, int] | None = None
    records_settled: bool = True
    recorder_ready: bool = False
    capacity: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)
    streams_refused: int = 0
    complaints: Mapping[str, int] = field(default_factory=dict)
    refused_results: int = 0
    sessions: Mapping[str, int] = field(default_factory=dict)
    streams: Sequence[StreamProgress] = ()
