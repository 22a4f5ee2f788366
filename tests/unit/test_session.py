"""Sessions with the core: Hello and Welcome, heartbeats both ways, silence, refusals, rejoining.

The peer's side (CoreSession) talks to a ROUTER the test holds, over inproc: what the core
would receive is read straight off it. Time is passed in, so no test sleeps.
"""

from __future__ import annotations

import logging

import pytest
import zmq

from encoders.shared import zmqio
from encoders.shared.messages import PROTOCOL, Bye, Credit, Heartbeat, Hello, Message, Refused, Welcome
from encoders.shared.session import CoreSession, SessionRefused, Sessions, hello_problem

CORE = "inproc://core"


def worker_hello() -> Hello:
    return Hello("worker", "w1", PROTOCOL, capacity=16, model="m", dim=4)


class Core:
    """The test's stand-in for the core's ROUTER."""

    def __init__(self, sockets) -> None:
        self.sock = sockets.bind(zmq.ROUTER, CORE)

    def receive(self) -> tuple[bytes, Message | None]:
        msg, identity = zmqio.receive(self.sock, routed=True)
        assert identity is not None
        return identity, msg

    def send(self, identity: bytes, msg: Message) -> None:
        zmqio.send(self.sock, msg, prefix=[identity])

    def nothing_waiting(self) -> bool:
        return not self.sock.poll(50)


@pytest.fixture
def core(sockets):
    return Core(sockets)


def session(sockets, **kw) -> tuple[CoreSession, list]:
    events: list = []
    s = CoreSession(
        sockets.ctx,
        CORE,
        worker_hello,
        on_join=lambda w: events.append(("join", w.core)),
        on_lost=lambda: events.append(("lost",)),
        **kw,
    )
    sockets.adopt(s.sock)
    return s, events


def take(s: CoreSession, now: float) -> list[Message]:
    assert s.sock.poll(1000)  # something arrived
    return list(s.take(now))


def test_hello_welcome_then_heartbeats_both_ways(sockets, core):
    s, events = session(sockets)
    s.start(now=0.0)
    identity, hello = core.receive()
    assert isinstance(hello, Hello) and hello.role == "worker" and hello.capacity == 16
    assert identity == s.identity and not s.joined
    core.send(identity, Welcome("core-1", 1.0, 3))
    assert take(s, 0.1) == [] and s.joined and events == [("join", "core-1")]
    s.tick(now=0.5)  # sent Hello at 0: no heartbeat due yet
    assert core.nothing_waiting()
    s.tick(now=1.2)
    assert isinstance(core.receive()[1], Heartbeat)
    core.send(identity, Heartbeat())
    core.send(identity, Credit(3))  # an application message reaches the owner
    assert [type(m) for m in take(s, 1.3)] == [Credit]


def test_a_silent_core_is_counted_gone_and_hello_is_said_again(sockets, core):
    s, events = session(sockets)
    s.start(now=0.0)
    identity, _ = core.receive()
    core.send(identity, Welcome("core-1", 1.0, 3))
    take(s, 0.0)
    s.tick(now=2.9)  # heard 2.9 s ago: not yet
    assert isinstance(core.receive()[1], Heartbeat) and s.joined
    s.tick(now=3.1)
    assert not s.joined and events == [("join", "core-1"), ("lost",)]
    assert isinstance(core.receive()[1], Hello)  # a new life, asked for at once
    core.send(identity, Welcome("core-2", 1.0, 3))
    take(s, 3.2)
    assert events[-1] == ("join", "core-2") and s.lives == 2


def test_messages_left_unread_by_a_peer_that_is_behind_count_as_the_core_heard(sockets, core):
    """The recorder, catching up, leaves the core's records unread while its database has no room: the
    core sent them, so it is not counted silent meanwhile; once they are read, its silence counts again."""
    s, events = session(sockets)
    s.start(now=0.0)
    identity, _ = core.receive()
    core.send(identity, Welcome("core-1", 1.0, 3))
    take(s, 0.0)
    core.send(identity, Credit(3))  # waits, unread
    assert s.sock.poll(1000)
    s.behind(now=5.0)
    s.tick(now=7.9)
    assert s.joined and events == [("join", "core-1")]
    assert [type(m) for m in s.take(8.0)] == [Credit]  # read at last: heard at 8
    s.behind(now=10.0)  # nothing waits any more: no sign of life
    s.tick(now=11.1)
    assert not s.joined and events[-1] == ("lost",)


def test_a_core_that_does_not_know_the_session_gets_hello_again(sockets, core):
    s, events = session(sockets)
    s.start(now=0.0)
    identity, _ = core.receive()
    core.send(identity, Welcome("core-1", 1.0, 3))
    take(s, 0.0)
    core.send(identity, Refused("unknown session", rejoin=True))  # the core restarted
    take(s, 0.5)
    assert events == [("join", "core-1"), ("lost",)]
    assert isinstance(core.receive()[1], Hello)


def test_the_cores_rejoins_to_messages_sent_before_the_hello_are_one_new_life_not_several(sockets, core):
    """A peer that was silent (stopped, cut off) wakes and sends what it held: the core answers each
    message it no longer knows with a Refused(rejoin). The first makes it say Hello; the others,
    answers to messages sent before that Hello, must not make it say Hello again: each Hello after
    the Welcome would be a new life that costs what the last one was given (a worker's frames)."""
    s, events = session(sockets)
    s.start(now=0.0)
    identity, _ = core.receive()
    core.send(identity, Welcome("core-1", 1.0, 3))
    take(s, 0.0)
    for _ in range(3):  # the answers to three messages it sent on waking
        core.send(identity, Refused("unknown session", rejoin=True))
    while s.sock.poll(200):
        list(s.take(0.5))
    hellos = []
    while not core.nothing_waiting():
        hellos.append(core.receive()[1])
    assert [type(m) for m in hellos] == [Hello]  # one Hello, not three
    core.send(identity, Welcome("core-2", 1.0, 3))
    take(s, 0.6)
    assert s.joined and s.lives == 2 and events == [("join", "core-1"), ("lost",), ("join", "core-2")]
    core.send(identity, Refused("unknown session", rejoin=True))  # after the Welcome: the core lost it again
    take(s, 0.7)
    assert not s.joined and isinstance(core.receive()[1], Hello)


def test_refused_for_now_waits_then_says_hello_again(sockets, core):
    s, _ = session(sockets)
    s.start(now=0.0)
    identity, _ = core.receive()
    core.send(identity, Refused("64 streams already", retry=True))
    take(s, 0.0)
    s.tick(now=1.0)
    assert core.nothing_waiting()
    s.tick(now=3.5)
    assert isinstance(core.receive()[1], Hello)


def test_refused_for_good_is_an_error_naming_the_reason(sockets, core):
    s, _ = session(sockets)
    s.start(now=0.0)
    identity, _ = core.receive()
    core.send(identity, Refused("a recorder is connected already"))
    assert s.sock.poll(1000)
    with pytest.raises(SessionRefused, match="refused this worker: a recorder is connected already"):
        list(s.take(0.0))


def test_no_answer_is_said_within_seconds_naming_the_address_and_the_setting(sockets, caplog):
    s, _ = session(sockets)  # nobody bound at CORE
    with caplog.at_level(logging.WARNING):
        s.start(now=0.0)
        s.tick(now=1.0)
        assert not caplog.records
        s.tick(now=3.2)
    assert len(caplog.records) == 1
    assert f"no answer from the core at {CORE} (ENCODERS_CORE) for 3 s" in caplog.records[0].message
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        s.tick(now=10.0)  # said again only now and then
    assert not caplog.records


def test_bye_from_the_core_ends_the_life(sockets, core):
    s, events = session(sockets)
    s.start(now=0.0)
    identity, _ = core.receive()
    core.send(identity, Welcome("core-1", 1.0, 3))
    take(s, 0.0)
    core.send(identity, Bye("taken over"))
    take(s, 0.1)
    assert not s.joined and events[-1] == ("lost",)


def test_the_cores_table_welcomes_expires_and_beats():
    t = Sessions(heartbeat_s=1.0, misses=3)
    hello = worker_hello()
    a, old = t.welcome(b"a", hello, now=0.0)
    assert old is None
    b, _ = t.welcome(b"b", Hello("ingest", "cam0", PROTOCOL, stream="cam0"), now=0.0)
    again, old = t.welcome(b"a", hello, now=0.5)  # a Hello starts a new life
    assert old is a and again is not a and t.peers[b"a"] is again
    assert t.heard(b"b", now=2.0) is b and t.heard(b"zzz", now=2.0) is None
    assert [p.identity for p in t.heartbeats_due(now=1.2)] == [b"b"]  # a's new life began at 0.5
    assert {p.identity for p in t.heartbeats_due(now=1.6)} == {b"a", b"b"}
    t.sent(again, now=1.6)
    assert [p.identity for p in t.heartbeats_due(now=1.7)] == [b"b"]
    assert [p.identity for p in t.expired(now=3.6)] == [b"a"]  # heard at 0.5
    assert [p.identity for p in t.of_role("ingest")] == [b"b"]
    assert [p.identity for p in t.expired(now=5.1)] == [b"b"] and not t.peers


def test_hellos_the_core_cannot_take_whatever_its_state():
    assert hello_problem(worker_hello()) is None
    assert "protocol 1" in (hello_problem(Hello("worker", "w", 1, capacity=4)) or "")
    assert hello_problem(Hello("ingest", "x", PROTOCOL)) == "an ingest's Hello names no stream"
    assert hello_problem(Hello("worker", "w", PROTOCOL)) == "a worker's Hello offers no capacity"
    assert "no embedding length" in (hello_problem(Hello("worker", "w", PROTOCOL, capacity=4, model="m")) or "")
