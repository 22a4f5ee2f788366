"""The core built by role (docs/PROTOCOL.md, "The core, built by role"): the modules of the core import
each other without a loop, every session's Hello, messages and departure reach its role through the
table, and the drain and the reporter decide from the core's progress given as plain values.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from encoders.services.metrics import service
from encoders.services.metrics.progress import OpenIngest, Snapshot, StreamProgress
from encoders.services.metrics.report import STATS_EVERY, Reporter
from encoders.services.metrics.stopping import Drain, Finish, GiveUp, Wait
from encoders.shared.messages import (
    PROTOCOL,
    Ack,
    Bye,
    Embedding,
    Hello,
    Message,
    Ready,
    Refused,
    Stats,
    Stop,
    Welcome,
)
from encoders.shared.session import Peer as Session

from ..fake_core import Capture
from .test_core_service import Rig

PACKAGE = "encoders.services.metrics"
ROLES = ("ingest", "worker", "recorder", "viewer", "control")


# -- the import graph --------------------------------------------------------------------------------


def internal_imports() -> dict[str, set[str]]:
    """Each module of the core's package -> the modules of the package it imports, anywhere in it
    (``if TYPE_CHECKING:`` blocks included: a loop for the type checker is a loop all the same)."""
    folder = Path(service.__file__).parent
    names = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in names:
        tree = ast.parse((folder / f"{name}.py").read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    found.add(node.module.split(".")[0])
                elif node.level == 1:  # from . import x
                    found.update(a.name for a in node.names)
                elif node.level == 0 and node.module and node.module.startswith(PACKAGE + "."):
                    found.add(node.module[len(PACKAGE) + 1 :].split(".")[0])
                elif node.level == 0 and node.module == PACKAGE:
                    found.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(PACKAGE + "."):
                        found.add(alias.name[len(PACKAGE) + 1 :].split(".")[0])
        graph[name] = found & names - {name}
    return graph


def reachable(graph: Mapping[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_cores_modules_import_each_other_without_a_loop():
    graph = internal_imports()
    assert {"service", "ingests", "report", "stopping", "workers", "recorders"} <= graph.keys()
    loops = sorted(name for name in graph if name in reachable(graph, name))
    assert not loops, f"modules on an import loop: {loops}"


@pytest.mark.parametrize("module", ["ingests", "report", "stopping", "workers", "recorders", "viewers", "controls"])
def test_no_part_of_the_core_imports_the_core(module):
    assert "service" not in reachable(internal_imports(), module)


# -- the table -------------------------------------------------------------------------------------------


class Recording:
    """A role that notes what the table hands it."""

    def __init__(self, takes: tuple[type[Message], ...], refusal: Any = None) -> None:
        self.takes, self._refusal = takes, refusal
        self.calls: list[tuple[str, Any]] = []

    def refusal(self, identity: bytes, hello: Hello, now: float) -> Any:
        self.calls.append(("refusal", hello.name))
        return self._refusal

    def join(self, peer: Session, hello: Hello, now: float) -> Mapping[str, Any]:
        self.calls.append(("join", peer.name))
        return {"run": "said-by-the-role"}

    def leave(self, peer: Session, why: str, now: float) -> None:
        self.calls.append(("leave", why))

    def take(self, peer: Session, msg: Message, now: float) -> None:
        self.calls.append(("take", msg.KIND))

    def tick(self, now: float) -> None:
        self.calls.append(("tick", now))


def hello_of(role: str, name: str = "p") -> Hello:
    extras: dict[str, dict[str, Any]] = {
        "ingest": {"stream": "cam0"},
        "worker": {"capacity": 2, "model": "m", "dim": 2},
    }
    return Hello(role, name, PROTOCOL, **extras.get(role, {}))  # type: ignore[arg-type]


@pytest.mark.parametrize("role", ROLES)
def test_each_roles_refusal_join_take_and_leave_are_reached_through_the_table(sockets, tmp_path, role):
    rig = Rig(sockets, tmp_path)
    stand_in = Recording(takes=(Stop,))
    rig.core.roles[role] = stand_in
    peer = rig.peer("p", hello_of(role))
    (welcome,) = peer.got()
    assert isinstance(welcome, Welcome) and welcome.run == "said-by-the-role"  # the fields join returned
    peer.send(Stop("taken"), Ack("cam0", 1))  # a kind it takes, and one it does not
    rig.step(0.1)
    peer.send(Bye("done"))
    rig.step(0.2)
    calls = [c for c in stand_in.calls if c[0] != "tick"]
    assert calls == [("refusal", "p"), ("join", "p"), ("take", "stop"), ("leave", "said Bye (done)")]
    assert {c[1] for c in stand_in.calls if c[0] == "tick"} >= {0.0, 0.1, 0.2}  # once a turn
    assert rig.core.complain.counts["unexpected_messages"] == 1


@pytest.mark.parametrize("role", ROLES)
def test_a_roles_refusal_for_now_is_a_refused_to_retry(sockets, tmp_path, role):
    rig = Rig(sockets, tmp_path)
    stand_in = Recording(takes=(), refusal=("no room", True))
    rig.core.roles[role] = stand_in
    (refused,) = rig.peer("p", hello_of(role)).got()
    assert isinstance(refused, Refused) and refused.retry and refused.reason == "no room"
    assert [c for c in stand_in.calls if c[0] != "tick"] == [("refusal", "p")]
    assert rig.core.complain.counts[f"refused_{role}s"] == 1


@pytest.mark.parametrize(
    ("role", "msg"),
    [
        ("viewer", Capture(1.0, 2, 2, b"jpeg")),
        ("control", Ready("run", {})),
        ("worker", Stop("not a worker's")),
        ("recorder", Capture(1.0, 2, 2, b"jpeg")),
        ("ingest", Embedding("cam0", 0, 1.0, "w", "m")),
    ],
)
def test_a_message_its_role_does_not_take_is_counted_and_dropped(sockets, tmp_path, role, msg):
    rig = Rig(sockets, tmp_path)
    ingest = rig.ingest()  # a stream, so that a capture taken would be seen
    peer = ingest if role == "ingest" else rig.peer("p", hello_of(role))
    assert isinstance(peer.got()[0], Welcome)
    peer.send(msg)
    rig.step(0.1)
    assert rig.core.complain.counts["unexpected_messages"] == 1
    assert rig.core.streams.totals("cam0")["published"] == 0  # nothing was done with it
    assert rig.core.drain is None


# -- the drain's decisions ----------------------------------------------------------------------------


def test_a_drain_with_nothing_left_is_finished():
    drain = Drain("asked", since=0.0, timeout_s=3.0)
    assert drain.give_up(Snapshot(), 0.1) == GiveUp()
    assert drain.step(Snapshot(), 0.1) == Finish()


def test_a_drain_waits_for_an_ingest_told_to_stop_then_ends_its_epoch_a_timeout_later():
    drain = Drain("asked", since=0.0, timeout_s=3.0)
    told = Snapshot(open_ingests=[OpenIngest("cam0", 0.0), OpenIngest("cam1", None)])
    assert drain.give_up(told, 2.0) == GiveUp()
    decided = drain.step(told, 2.0)
    assert isinstance(decided, Wait) and decided.waiting_for == ["the capture of cam0, cam1 to end"]
    assert drain.give_up(told, 3.5) == GiveUp(ingests=["cam0"])  # cam1 was never told: not ended


def test_frames_waiting_are_dropped_only_when_no_worker_would_take_them():
    drain = Drain("asked", since=0.0, timeout_s=3.0)
    assert drain.give_up(Snapshot(frames_waiting=2, workers=1), 10.0) == GiveUp()
    assert drain.give_up(Snapshot(frames_waiting=2, workers=0), 2.0) == GiveUp()  # one may still come
    assert drain.give_up(Snapshot(frames_waiting=2, workers=0), 3.5) == GiveUp(waiting=True)


def test_a_drain_waits_for_outcomes_and_acks_in_words():
    drain = Drain("asked", since=0.0, timeout_s=3.0)
    left = Snapshot(
        in_use=3,
        unsettled=["cam0"],
        records={"records_held": 5, "spool_bytes": 10},
        records_settled=False,
    )
    decided = drain.step(left, 1.0)
    assert isinstance(decided, Wait)
    assert decided.waiting_for == [
        "3 frames in workers' hands",
        "outcomes of cam0",
        "a recorder (none is ready) to acknowledge records (5 held, 10 bytes spooled)",
    ]
    assert drain.step(Snapshot(records={"records_held": 0, "spool_bytes": 0}), 1.1) == Finish()


def test_outcomes_nothing_is_left_to_bring_are_given_up_a_timeout_after_that_is_so():
    drain = Drain("asked", since=0.0, timeout_s=3.0)
    unowned = Snapshot(unsettled=["cam0"], workers=1)
    owned = Snapshot(unsettled=["cam0"], workers=1, in_use=2)  # a worker still holds some: they may come
    assert drain.give_up(owned, 10.0) == GiveUp()
    assert drain.give_up(unowned, 11.0) == GiveUp()  # the timeout runs from when nothing holds them
    assert drain.give_up(unowned, 13.9) == GiveUp()
    assert drain.give_up(owned, 14.5) == GiveUp()  # held again (a frame assigned late): starts over
    assert drain.give_up(unowned, 15.0) == GiveUp()
    assert drain.give_up(unowned, 18.1) == GiveUp(unowned=True)
    # An ingest still open or frames waiting own what is missing too.
    other = Drain("asked", since=0.0, timeout_s=3.0)
    for busy in (Snapshot(unsettled=["cam0"], open_ingests=[OpenIngest("cam0", 0.0)]),
                 Snapshot(unsettled=["cam0"], frames_waiting=1, workers=1)):  # fmt: skip
        other.give_up(busy, 20.0)
        assert not other.give_up(busy, 30.0).unowned


def test_a_drain_out_of_time_gives_everything_up_and_finishes_all_the_same():
    drain = Drain("a signal", since=0.0, timeout_s=3.0)
    drain.ask(0.0, None, limit_s=2.0)
    stuck = Snapshot(open_ingests=[OpenIngest("cam0", None)], frames_waiting=1, workers=1, in_use=1)
    assert drain.give_up(stuck, 1.0) == GiveUp()
    assert drain.give_up(stuck, 2.0) == GiveUp(ingests=["cam0"], waiting=True, held=True)
    decided = drain.step(stuck, 2.0)
    assert isinstance(decided, Finish) and decided.left[0] == "the capture of cam0 to end"


def test_who_asked_to_stop_is_answered_and_the_shortest_limit_holds():
    drain = Drain("asked", since=0.0, timeout_s=3.0)
    drain.ask(0.0, b"a", None)
    drain.ask(1.0, b"a", 5.0)
    drain.ask(2.0, b"b", 10.0)
    assert drain.requesters == [b"a", b"b"] and drain.deadline == 6.0


# -- the reporter's Stats ------------------------------------------------------------------------------


def test_the_reporter_returns_each_streams_stats_once_a_second():
    stream = StreamProgress("cam0", {"published": 3, "embedded": 2}, 1.234, 1, 0, 0, None)
    progress = Snapshot(
        workers=2,
        capacity=4,
        in_use=1,
        counters={"records": 2},
        records={"records_held": 1},
        sessions={"worker": 2},
        streams=[stream],
    )
    reporter = Reporter(logging.getLogger("test"))
    (stats,) = reporter.tick(progress, 10.0)
    assert isinstance(stats, Stats) and (stats.service, stats.stream) == ("metrics", "cam0")
    c = stats.counters
    assert (c["published"], c["fps"], c["waiting"], c["records"], c["records_held"]) == (3, 1.23, 1, 2, 1)
    assert (c["workers"], c["capacity"], c["in_use"], c["sessions_worker"], c["sessions_viewer"]) == (2, 4, 1, 2, 0)
    assert reporter.tick(progress, 10.0 + STATS_EVERY / 2) == []
    assert len(reporter.tick(progress, 10.0 + STATS_EVERY)) == 1
