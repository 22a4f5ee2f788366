"""The core's progress (progress.py), read from its parts when asked: the view of the core the drain
(stopping.py) and the reporter (report.py) are given. It holds the parts, not the core.
"""

from __future__ import annotations

from collections.abc import Sequence

from encoders.shared.complaints import Complaints
from encoders.shared.session import Sessions

from .broker import Broker
from .ingests import Ingests
from .models import PipelineModel
from .progress import OpenIngest, StreamProgress
from .recorders import Recorders
from .report import ROLES
from .streams import Streams


class CoreProgress:
    """The core's progress (progress.py), read from its parts when asked: what the drain and the reporter read."""

    def __init__(
        self,
        sessions: Sessions,
        broker: Broker,
        streams: Streams,
        ingests: Ingests,
        recorders: Recorders,
        model: PipelineModel,
        complain: Complaints,
        counters: dict[str, int],
    ) -> None:
        self._sessions, self._broker, self._streams, self._ingests = sessions, broker, streams, ingests
        self._recorders, self._model, self.complaints, self.counters = recorders, model, complain.counts, counters

    @property
    def open_ingests(self) -> Sequence[OpenIngest]:
        return [OpenIngest(i.stream, i.stop_sent) for i in self._ingests.open()]

    @property
    def frames_waiting(self) -> int:
        return self._broker.frames_waiting

    @property
    def workers(self) -> int:
        return len(self._broker.workers)

    @property
    def in_use(self) -> int:
        return self._broker.in_use

    @property
    def capacity(self) -> int:
        return self._broker.capacity

    @property
    def unsettled(self) -> Sequence[str]:
        return self._streams.unsettled()

    @property
    def records(self) -> dict[str, int] | None:
        delivery = self._recorders.delivery
        return delivery.stats() if delivery is not None else None

    @property
    def records_settled(self) -> bool:
        return self._recorders.delivery is None or self._recorders.delivery.settled

    @property
    def recorder_ready(self) -> bool:
        return self._recorders.ready is not None

    @property
    def streams_refused(self) -> int:
        return self._ingests.streams_refused

    @property
    def refused_results(self) -> int:
        return sum(self._model.refused_results.values())

    @property
    def sessions(self) -> dict[str, int]:
        return {role: len(self._sessions.of_role(role)) for role in ROLES}

    @property
    def streams(self) -> Sequence[StreamProgress]:
        offsets = self._ingests.clocks.offsets
        return [
            StreamProgress(
                name,
                self._streams.totals(name),
                state.drift.fps(),
                self._broker.queued(name),
                state.order.waiting(),
                state.order.forced,
                offsets.get(name),
            )
            for name, state in self._streams.streams.items()
        ]
