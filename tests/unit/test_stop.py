"""`encoders stop`'s request (src/encoders/control.py) against a core the test holds (a ROUTER over
inproc), one step at a time with the time passed in; and the totals it prints (a table, or JSON)."""

from __future__ import annotations

import json
import uuid

import pytest
import zmq

from encoders.control import EXIT_NO_CORE, EXIT_TIMEOUT, SETTING, StopRequest, totals_json, totals_table
from encoders.shared import zmqio
from encoders.shared.messages import PROTOCOL, Draining, Heartbeat, Hello, Message, Refused, Stop, Stopped, Welcome
from encoders.shared.session import CoreSession, SessionRefused
from encoders.shared.settings import CoreConnection


class Core:
    def __init__(self, sockets, at: str) -> None:
        self.sock = sockets.bind(zmq.ROUTER, at)

    def receive(self) -> tuple[bytes, Message]:
        """The next message other than a heartbeat."""
        while True:
            assert self.sock.poll(2000), "the core received nothing"
            msg, identity = zmqio.receive(self.sock, routed=True)
            assert identity is not None and msg is not None
            if not isinstance(msg, Heartbeat):
                return identity, msg

    def send(self, identity: bytes, msg: Message) -> None:
        zmqio.send(self.sock, msg, prefix=[identity])


@pytest.fixture
def at() -> str:
    return f"inproc://core-{uuid.uuid4().hex}"


def request(sockets, at: str, timeout_s: float = 120.0) -> StopRequest:
    session = CoreSession.from_settings(sockets.ctx, CoreConnection(core=at), "control", setting=SETTING)
    sockets.adopt(session.sock)
    return StopRequest(session, "maintenance", timeout_s)


def step_until(req: StopRequest, now: float, condition) -> Stopped | None:
    for _ in range(100):
        stopped = req.step(now)
        if stopped is not None or condition():
            return stopped
        req.session.sock.poll(20)
    raise AssertionError("the condition never held")


def asked(sockets, at: str, timeout_s: float) -> tuple[Core, StopRequest, bytes]:
    """A request welcomed by the core at 0.0 and its Stop sent (at 0.1): the core, the request, its identity."""
    core = Core(sockets, at)
    req = request(sockets, at, timeout_s=timeout_s)
    req.step(0.0)
    identity, _ = core.receive()
    core.send(identity, Welcome("core-1", 1.0, 3))
    step_until(req, 0.1, lambda: req.asked)
    return core, req, identity


def test_stop_is_sent_once_welcomed_and_the_stopped_totals_returned(sockets, at):
    core = Core(sockets, at)
    req = request(sockets, at)
    assert req.step(0.0) is None
    identity, hello = core.receive()
    assert isinstance(hello, Hello) and (hello.role, hello.protocol) == ("control", PROTOCOL)
    core.send(identity, Welcome("core-1", 1.0, 3))
    step_until(req, 0.1, lambda: req.asked)
    _, stop = core.receive()
    assert isinstance(stop, Stop) and stop.reason == "maintenance" and req.asked_at == 0.1
    assert req.failure(60.0) is None  # draining: it waits
    totals = Stopped({"cam0": {"published": 10, "embedded": 9, "dropped": 1, "skipped": 0, "lost": 0}})
    core.send(identity, totals)
    assert step_until(req, 61.0, lambda: False) == totals
    req.close(61.0)
    assert type(core.receive()[1]).__name__ == "Bye"


def test_a_core_that_restarts_before_reporting_is_asked_again(sockets, at):
    core = Core(sockets, at)
    req = request(sockets, at)
    req.step(0.0)
    identity, _ = core.receive()
    core.send(identity, Welcome("core-1", 1.0, 3))
    step_until(req, 0.1, lambda: req.asked)
    assert isinstance(core.receive()[1], Stop)
    core.send(identity, Refused("unknown session", rejoin=True))  # it restarted meanwhile
    step_until(req, 0.2, lambda: not req.session.joined)
    assert isinstance(core.receive()[1], Hello)
    core.send(identity, Welcome("core-2", 1.0, 3))
    step_until(req, 0.3, lambda: req.session.lives == 2)
    assert isinstance(core.receive()[1], Stop)  # the new life of the core is asked too
    assert req.asked_at == 0.1


def test_no_answer_within_the_session_timeout_is_exit_2_naming_the_address_and_setting(sockets, at):
    req = request(sockets, at)  # nobody there
    req.step(0.0)
    assert req.failure(2.9) is None
    code, why = req.failure(3.0) or (0, "")
    assert code == EXIT_NO_CORE
    assert why.startswith(f"no answer from the core at {at} (--pipeline / ENCODERS_CORE) for 3 s")
    # A timeout shorter than the session's: the same, at the timeout.
    short = request(sockets, at, timeout_s=1.0)
    short.step(0.0)
    assert (short.failure(1.0) or (0, ""))[0] == EXIT_NO_CORE


def test_past_the_timeout_it_says_what_it_waited_for(sockets, at):
    _core, req, _ = asked(sockets, at, timeout_s=10.0)
    code, why = req.failure(10.0) or (0, "")
    assert code == EXIT_TIMEOUT and "has not reported Stopped within 10 s" in why and "still draining" in why
    req.session.tick(5.0)  # nothing heard for 4.9 s: counted gone
    code, why = req.failure(10.0) or (0, "")
    assert code == EXIT_TIMEOUT and "went silent without reporting Stopped" in why


def test_what_the_core_says_its_drain_waits_for_is_kept_and_named_at_the_timeout(sockets, at):
    core, req, identity = asked(sockets, at, timeout_s=10.0)
    assert isinstance(core.receive()[1], Stop)
    core.send(identity, Draining("the capture of cam0 to end; 12 frames in workers' hands"))
    step_until(req, 0.2, lambda: req.heard_draining)
    assert req.waiting_for == "the capture of cam0 to end; 12 frames in workers' hands"
    core.send(identity, Draining("the recorder to acknowledge records (3 held, 0 bytes spooled)"))
    step_until(req, 0.3, lambda: req.heard_draining)
    req.step(0.4)
    assert not req.heard_draining  # news only in the step it came
    code, why = req.failure(10.0) or (0, "")
    assert code == EXIT_TIMEOUT
    assert "still draining (waiting for the recorder to acknowledge records (3 held, 0 bytes spooled))" in why


def test_a_refusal_for_good_is_raised(sockets, at):
    core = Core(sockets, at)
    req = request(sockets, at)
    req.step(0.0)
    identity, _ = core.receive()
    core.send(identity, Refused("protocol 1, but this core speaks protocol 2"))
    req.session.sock.poll(2000)
    with pytest.raises(SessionRefused, match="refused this control: protocol 1"):
        req.step(0.1)


def test_the_totals_table():
    one = totals_table({"cam0": {"published": 1200, "embedded": 1180, "dropped": 15, "skipped": 5, "lost": 0}})
    assert one.splitlines() == [
        "stream  published  embedded  dropped  skipped  lost",
        "cam0         1200      1180       15        5     0",
    ]
    two = totals_table(
        {
            "cam1": {"published": None, "embedded": 3, "dropped": 0, "skipped": 0, "lost": 1, "late": 2},
            "cam0": {"published": 10, "embedded": 10, "dropped": 0, "skipped": 0, "lost": 0},
        }
    ).splitlines()
    assert two[0].split() == ["stream", "published", "embedded", "dropped", "skipped", "lost", "late"]
    assert [line.split() for line in two[1:]] == [
        ["cam0", "10", "10", "0", "0", "0", "-"],
        ["cam1", "-", "3", "0", "0", "1", "2"],
        ["total", "-", "13", "0", "0", "1", "2"],
    ]
    assert totals_table({}) == "stream  published  embedded  dropped  skipped  lost"


def test_the_totals_as_json_for_programs():
    streams = {
        "cam1": {"published": None, "embedded": 3, "dropped": 0, "skipped": 0, "lost": 1, "late": 2},
        "cam0": {"published": 10, "embedded": 10, "dropped": 0, "skipped": 0, "lost": 0},
    }
    out = totals_json(streams)  # type: ignore[arg-type]
    assert "\n" not in out  # one line: one object
    assert json.loads(out) == {"streams": streams}  # every count by its name, published null when unknown
    assert json.loads(totals_json({})) == {"streams": {}}
