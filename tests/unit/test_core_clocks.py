"""Issue #22: an ingest whose clock is off is said (once per stream) and counted; the core's own pauses
are nobody's silence (clocks.py)."""

from __future__ import annotations

import logging

import pytest

from encoders.services.metrics.clocks import CONFIRM_S, Clocks, CoreClock
from encoders.shared.complaints import Complaints
from encoders.shared.messages import PROTOCOL, Hello, Stats
from encoders.shared.session import Sessions

from .test_core_service import Rig, capture

WALL = 1_700_000_000.0
HOUR = 3600.0


def clocks(max_skew: float = 5.0) -> tuple[Clocks, Complaints]:
    complain = Complaints(logging.getLogger("test.clocks"), "Stats")
    return Clocks(complain, max_skew, wall=lambda: WALL), complain


def test_an_ingest_an_hour_ahead_is_said_once_naming_the_stream_and_the_offset(caplog):
    c, complain = clocks()
    with caplog.at_level(logging.WARNING):
        for now in range(10):
            c.capture("door", WALL + HOUR + now, float(now))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "stream door" in said[0] and "3600.0 s ahead of" in said[0]
    assert "ENCODERS_MAX_CLOCK_SKEW" in said[0]
    assert complain.counts == {"clock_skew": 1} and c.offsets["door"] == pytest.approx(HOUR + 9)
    c.capture("yard", WALL - HOUR, 0.0)  # another stream: counted too (behind: once it lasts)
    c.capture("yard", WALL - HOUR, CONFIRM_S)
    assert complain.counts == {"clock_skew": 2}


def test_captures_within_the_bound_are_not_said():
    c, complain = clocks()
    for now in range(20):
        c.capture("door", WALL + (4.0 if now % 2 else -4.0), float(now))
    assert complain.counts == {}


def test_late_captures_read_in_a_burst_are_not_a_clock_but_a_clock_behind_for_a_while_is():
    c, complain = clocks()
    for _ in range(500):  # a core that was paused reads a minute of captures at once
        c.capture("door", WALL - 60.0, 100.0)
    c.capture("door", WALL - 0.1, 100.2)  # then they come on time again
    c.capture("door", WALL - 60.0, 100.3)
    c.capture("door", WALL - 60.0, 100.3 + CONFIRM_S - 0.1)
    assert complain.counts == {}
    c.capture("door", WALL - 60.0, 100.3 + CONFIRM_S)  # every capture late for CONFIRM_S: the clock
    assert complain.counts == {"clock_skew": 1}


def test_a_lossless_ingests_captures_may_wait_for_credit_so_only_ahead_counts():
    c, complain = clocks()
    for now in range(20):
        c.capture("door", WALL - 60.0, float(now), lossless=True)
    assert complain.counts == {}
    c.capture("door", WALL + 60.0, 21.0, lossless=True)
    assert complain.counts == {"clock_skew": 1}


def test_no_bound_no_check_and_an_ingest_that_leaves_is_no_longer_measured():
    c, complain = clocks(max_skew=0)
    c.capture("door", WALL + HOUR, 0.0)
    assert complain.counts == {} and c.offsets == {}
    c, _ = clocks()
    c.capture("door", WALL + 1.0, 0.0)
    c.leave("door")
    assert c.offsets == {}


def test_the_core_warns_about_an_ingest_ahead_and_its_stats_show_the_offset(sockets, tmp_path, caplog):
    rig = Rig(sockets, tmp_path, max_clock_skew=5.0)
    rig.core.ingests.clocks.wall = lambda: WALL
    ingest = rig.ingest("door")
    ingest.got()
    with caplog.at_level(logging.WARNING, logger="encoders.metrics"):
        ingest.send(capture(WALL + HOUR), capture(WALL + HOUR + 0.5))
        rig.step(1.5)
    assert [r for r in caplog.records if "door" in r.getMessage() and "clock" in r.getMessage()]
    assert rig.core.complain.counts["clock_skew"] == 1
    stats = [m for m in rig.published() if isinstance(m, Stats) and m.stream == "door"][-1]
    assert stats.counters["clock_offset_s"] == pytest.approx(HOUR + 0.5) and stats.counters["clock_skew"] == 1


def test_the_cores_clock_leaves_out_the_time_its_loop_did_not_run():
    real = [0.0]
    clock = CoreClock(0.5, source=lambda: real[0])
    readings = []
    for t in (0.0, 0.05, 0.1, 30.1, 30.15, 30.2):  # paused for 30 s after 0.1
        real[0] = t
        readings.append((clock(), clock.gap))
    assert [round(r, 3) for r, _ in readings] == [0.0, 0.05, 0.1, 0.6, 0.65, 0.7]
    assert [round(g, 3) for _, g in readings] == [0.0, 0.0, 0.0, 29.5, 0.0, 0.0]


def test_after_the_core_resumes_its_peers_silence_counts_from_then_and_each_is_due_a_heartbeat():
    sessions = Sessions(heartbeat_s=1.0, misses=3)
    peer, _ = sessions.welcome(b"p", Hello("ingest", "door-ingest", PROTOCOL, stream="door"), 0.0)
    sessions.sent(peer, 0.9)
    sessions.resumed(1.0)  # the core's loop had not run: what the peer sent is not read yet
    assert sessions.heartbeats_due(1.0) == [peer]
    assert sessions.expired(3.9) == []  # a timeout from the resumption, not from its last message
    assert sessions.expired(4.1) == [peer]  # and then gone, if it really went away meanwhile


def test_a_core_that_keeps_stalling_still_counts_a_silent_peer_gone_in_the_end():
    sessions = Sessions(heartbeat_s=1.0, misses=3)
    sessions.welcome(b"p", Hello("worker", "w", PROTOCOL, capacity=2, model="m", dim=2), 0.0)
    for now in (2.0, 4.0):
        sessions.resumed(now)
        assert sessions.expired(now) == []
    assert [p.name for p in sessions.expired(6.1)] == ["w"]  # twice the timeout since it was last heard
