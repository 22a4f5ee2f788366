"""The workers' side of the core: a worker's Hello checked against the pipeline's model, its
capacity given to the broker, frames dispatched to the workers with room, each result checked
against who holds its frame and filed, and a worker that leaves costing only its frames
(docs/PROTOCOL.md, "Workers").

Which worker gets which frame is broker.py's; the one model and length, models.py's. This is
the role (roles.py) the core dispatches a worker's Hello, results and departure to.

Protocol 3 (docs/PROTOCOL.md): a frame's worker is told to its ingest (``assigned``), which sends
the picture to the worker's data socket; the worker's number, data address and key are the data
links' (links.py), and each worker is told the ingest keys its data socket admits. A worker
returns outcomes in the order its pictures came, and the pictures of one stream come in seq
order: an embedded outcome for seq n while an earlier seq of that stream assigned to the same
worker has none means that picture never arrived (its link broke): it is lost at once, counted
``link_lost``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from encoders.shared.complaints import Complaints
from encoders.shared.messages import Admits, Hello, Message, Refused, Results, Skipped
from encoders.shared.session import Peer, Sessions

from .broker import Broker
from .links import DataLinks, data_address
from .models import PipelineModel
from .reorder import LOST
from .roles import End, Refusal, Send
from .streams import DROPPED, Streams

log = logging.getLogger("encoders.metrics")


class Workers:
    takes: tuple[type[Message], ...] = (Results, Admits)

    def __init__(
        self,
        broker: Broker,
        model: PipelineModel,
        streams: Streams,
        sessions: Sessions,
        send: Send,
        end: End,
        complain: Complaints,
        counters: dict[str, int],
        links: DataLinks | None = None,
        assigned: Callable[[str, int, int], bool] = lambda stream, seq, worker: True,
    ) -> None:
        """``sessions``: to let go of a worker that sent another model's result; ``counters``: the
        core's, where the frames lost with departed workers are counted (``workers_lost_frames``), and
        those whose picture never came (``link_lost``); ``links``: the data links (links.py);
        ``assigned(stream, seq, worker number)``: tells the frame's ingest (ingests.py), False if it is gone."""
        self.broker, self.model, self.streams, self.sessions = broker, model, streams, sessions
        self._send, self._end, self.complain = send, end, complain
        self.links = links if links is not None else DataLinks()
        self.assigned = assigned
        self.counters = counters
        for name in ("workers_lost_frames", "link_lost", "ingest_gone_frames"):
            self.counters.setdefault(name, 0)
        self._told_admit: set[bytes] = set()  # workers told the ingest keys as they are now

    # -- sessions ----------------------------------------------------------------------------------

    def refusal(self, identity: bytes, hello: Hello, now: float) -> Refusal:
        return self.model.refusal(hello)

    def join(self, peer: Peer, hello: Hello, now: float) -> Mapping[str, Any]:
        self.model.join(hello)
        self.broker.add_worker(peer.identity, hello.name, hello.capacity)
        key = peer.state.get("key")
        address = data_address(hello.data, hello.advertised, peer.state.get("peer_address", ""))
        number = self.links.add_worker(peer.identity, address, key.key.decode("ascii") if key is not None else "")
        self._told_admit.discard(peer.identity)
        log.info("worker %s joined: capacity %d, model %s (%d floats), number %d, pictures at %s", hello.name,
                 hello.capacity, hello.model, hello.dim, number, address or "(no data socket)")  # fmt: skip
        return {}

    def leave(self, peer: Peer, why: str, now: float) -> None:
        self.links.remove_worker(peer.identity)
        self._told_admit.discard(peer.identity)
        lost = self.broker.remove_worker(peer.identity)
        for stream, seq in lost:
            self.streams.outcome(stream, seq, LOST, now)
        self.counters["workers_lost_frames"] += len(lost)
        (log.warning if lost else log.info)("worker %s left (%s): %d frames it held lost", peer.name, why, len(lost))

    # -- messages and time -------------------------------------------------------------------------

    def take(self, peer: Peer, msg: Message, now: float) -> None:
        assert isinstance(msg, Results | Admits)  # the core dispatches only what ``takes`` names
        if isinstance(msg, Admits):
            self._admits(peer, msg, now)
        else:
            self._results(peer, msg, now)

    def _admits(self, peer: Peer, msg: Admits, now: float) -> None:
        """The worker's data socket admits the ingest keys of that generation: the ingests whose key it
        brought are told the worker's link (this turn, before any Assigned), and their captures may go to it."""
        linked = self.links.admits(peer.identity, msg.generation)
        if linked is None:
            self.complain("bad_admits", "worker %s admits generation %d, which this core never sent", peer.name,
                          msg.generation)  # fmt: skip
        elif linked:
            self._dispatch(now)

    def tick(self, now: float) -> None:
        for identity, (stream, seq) in self.broker.overdue(now):
            self.complain(
                "frames_overdue", "worker %s held %s/%d too long: given up", self.sessions.who(identity), stream, seq
            )
            self.streams.outcome(stream, seq, LOST, now)
        self._dispatch(now)
        self._tell_admit(now)

    def _tell_admit(self, now: float) -> None:
        """Each worker told the ingest keys its data socket admits, when they changed (with keys)."""
        if self.links.admit_changed:
            self.links.admit_changed = False
            self._told_admit.clear()
        admit = None
        for identity in self.broker.workers:
            if identity not in self._told_admit:
                admit = admit or self.links.admit()
                if self._send(identity, admit, now):
                    self._told_admit.add(identity)

    def _dispatch(self, now: float) -> None:
        """Frames assigned to workers with room (streams in turn), each told to its ingest, which sends
        the picture; a frame whose ingest is gone is lost at once (its picture will never come)."""
        for identity, frame in self.broker.assign(now, self.links.may()):
            if not self.assigned(frame.stream, frame.seq, self.links.number(identity)):
                self.broker.forget(identity, (frame.stream, frame.seq))
                self.counters["ingest_gone_frames"] += 1
                self.streams.outcome(frame.stream, frame.seq, LOST, now)

    dispatch = _dispatch  # for the ingests: a capture goes out at once to a worker with room

    def drop_waiting(self, now: float) -> None:
        """Every frame waiting for a worker dropped (a drain that no worker would ever serve, or out of time)."""
        for frame in self.broker.drop_waiting():
            self.streams.outcome(frame.stream, frame.seq, DROPPED, now)

    def give_up_held(self, now: float) -> None:
        """Every frame in workers' hands given up, lost (a drain out of time)."""
        for stream, seq in self.broker.give_up_held():
            self.streams.outcome(stream, seq, LOST, now)

    def _results(self, peer: Peer, msg: Results, now: float) -> None:
        """A worker's batch of results: the model checked once, each row against what the worker
        holds and filed as a per-frame outcome, then one dispatch for the room it freed."""
        problem = self.model.results_problem(peer.hello, msg)
        refused = False  # an embedding of another model or length, for a frame it holds
        newest: dict[str, int] = {}  # stream -> the highest seq embedded in this message
        for row in msg.rows():
            if not self.broker.result(peer.identity, row.stream, row.seq):
                self.complain(
                    "unexpected_results",
                    "a result for %s/%d from worker %s, which does not hold that frame: dropped",
                    row.stream,
                    row.seq,
                    peer.name,
                )
                continue
            if isinstance(row, Skipped):
                self.complain("skipped", "worker %s skipped %s/%d: %s", peer.name, row.stream, row.seq, row.reason)
                self.streams.outcome(row.stream, row.seq, row, now)
            elif problem is not None:
                # Recorded, it would decide the database's vector type or be refused there: the frame is skipped
                # (counted), and the worker told and let go (what else it holds is lost) once its batch is filed.
                self.streams.outcome(row.stream, row.seq, Skipped(row.stream, row.seq, peer.name, problem), now)
                refused = True
            else:
                self.streams.outcome(row.stream, row.seq, row, now)  # too late: counted by the stream
            if not isinstance(row, Skipped) and row.seq > newest.get(row.stream, -1):
                newest[row.stream] = row.seq  # an embedding it held (else: ``continue``d above)
        # Outcomes of one (stream, worker) come in seq order (embedded ones: a skip for a picture that did not
        # decode comes earlier, with or before the batch before it): an earlier seq it still holds never came.
        for stream, seq in newest.items():
            for key in self.broker.held_before(peer.identity, stream, seq):
                self.counters["link_lost"] += 1
                self.complain("link_lost", "%s/%d never reached worker %s (its data link broke?): lost", key[0],
                              key[1], peer.name)  # fmt: skip
                self.streams.outcome(key[0], key[1], LOST, now)
        if refused:
            log.error("worker %s sent %s; it is let go", peer.name, problem)
            self._send(peer.identity, Refused(f"this core refused your result: {problem}"), now)
            self.sessions.remove(peer.identity)
            self._end(peer, "sent an embedding of another model or length", now)
            return
        self._dispatch(now)  # the capacity it freed lets the next frames out
