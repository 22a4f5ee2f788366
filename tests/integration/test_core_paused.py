"""Issue #22: a core paused (SIGSTOP) for longer than the heartbeat timeout and resumed must read what its
peers sent meanwhile before it judges their silence. It used to expire every session at its first
turn, before ZeroMQ had even read their messages from the kernel, and count the captures they had
sent as never arrived. The core's clock now leaves out the time its loop did not run (clocks.py).

The core is a real process; the ingest is a session of the test (shared/session.py) that sends a
capture every 0.1 s, as a camera's ingest does, and heartbeats, and does not itself give up on the
core while it is stopped (its timeout, and ZeroMQ's heartbeats under the messages, are long), so
what is judged here is the core's side alone.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import zmq

from encoders.shared import zmqio
from encoders.shared.messages import PROTOCOL, Captured, CaptureNote, Hello, Stats
from encoders.shared.session import CoreSession

from ..conftest import free_port

HEARTBEAT_S = 0.3  # the core counts a peer gone after 0.9 s of silence
PAUSE_S = 3.0  # more than three times that
INGEST_HEARTBEAT_S = 20.0  # the test's ingest (and its ZMTP heartbeats) waits out the pause
CAPTURE_EVERY_S = 0.1


@pytest.mark.timeout(60)
def test_a_core_paused_past_the_heartbeat_timeout_loses_no_session_and_no_capture(service, sockets, tmp_path):
    eps = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("core", "frames", "metrics")}
    core = service(
        "metrics",
        *("--core-bind", eps["core"], "--frames-bind", eps["frames"], "--metrics-bind", eps["metrics"]),
        *("--state-dir", str(tmp_path / "state"), "--heartbeat-s", str(HEARTBEAT_S), "--no-recorder"),
    )
    stats = sockets.connect(zmq.SUB, eps["metrics"], subscribe=[b"stats/door"])
    lost_core: list[float] = []
    session = CoreSession(
        sockets.ctx,
        eps["core"],
        lambda: Hello("ingest", "door-ingest", PROTOCOL, stream="door"),
        heartbeat_s=INGEST_HEARTBEAT_S,  # a new life of its own would end the session: not what is tested
        on_lost=lambda: lost_core.append(time.monotonic()),
    )
    session.heartbeat_s = HEARTBEAT_S  # its Heartbeats as often as the core's; ZeroMQ's own stay slow
    sockets.adopt(session.sock)
    sent = undelivered = 0

    def pump(until: float) -> None:
        """Take what the core sends and heartbeat, until ``until`` (monotonic)."""
        while True:
            now = time.monotonic()
            list(session.take(now))  # an ingest without credit gets nothing else
            session.tick(now)
            if now >= until:
                return
            session.sock.poll(20)

    def capture() -> None:
        nonlocal sent, undelivered
        try:
            note = CaptureNote(sent + undelivered, time.time(), 4, 2, 2)  # announced, as protocol 3's ingest does
            session.send(Captured.of([note]), time.monotonic(), flags=zmq.NOBLOCK)
            sent += 1
        except zmq.Again:  # no connection to queue it to (ZeroMQ's heartbeats gave it up): as an ingest counts
            undelivered += 1

    def latest_counters() -> dict:
        counters: dict = {}
        while stats.poll(0):
            msg, _ = zmqio.receive(stats, topic=True)
            if isinstance(msg, Stats):
                counters = msg.counters
        return counters

    def capturing(seconds: float) -> None:
        """A capture every 0.1 s for ``seconds``, as a camera's ingest sends them."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            capture()
            pump(time.monotonic() + CAPTURE_EVERY_S)

    session.start(time.monotonic())
    deadline = time.monotonic() + 30
    while not session.joined:
        assert time.monotonic() < deadline, f"the core did not welcome the ingest:\n{core.output()[-2000:]}"
        pump(time.monotonic() + 0.05)
    capturing(0.5)
    os.kill(core.proc.pid, signal.SIGSTOP)
    try:
        capturing(PAUSE_S)  # that long is the point: the core is stopped
    finally:
        os.kill(core.proc.pid, signal.SIGCONT)
    capturing(3 * HEARTBEAT_S * 3)  # past another timeout: still heard, still alive

    # Every capture is numbered, none counted lost, and the session lives on.
    deadline = time.monotonic() + 20
    counters: dict = {}
    while counters.get("published") != sent:
        assert time.monotonic() < deadline, f"{sent} sent, the core's Stats: {counters}\n{core.output()[-3000:]}"
        pump(time.monotonic() + 0.1)
        counters = latest_counters() or counters
    log = core.output()
    assert counters["lost"] == 0 and counters["published"] == sent, counters
    assert counters["sessions_ingest"] == 1 and counters["core_stalls"] >= 1, counters
    assert session.joined and session.lives == 1 and not lost_core
    assert "silent for" not in log and "left" not in log, log[-3000:]
    assert "the core did not run for" in log
