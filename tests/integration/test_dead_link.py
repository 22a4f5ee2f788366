"""A session without ZMTP heartbeats (the recorder's) notices a TCP link that died without a word.

The recorder's session has no ZeroMQ heartbeats (recorder/main.py says why), so a link that dies
silently (a NAT's timeout, a cable, a machine gone) was left to TCP's own retries: some 15 minutes
of a session saying Hello into a dead connection. The kernel now drops a connection whose data goes
unacknowledged for the session's timeout (zmq.TCP_MAXRT: TCP_USER_TIMEOUT), and ZeroMQ connects again.

The link dies for real here: the kernel's firewall drops every packet to the core's port on the
loopback, as a dead link does, while both ends stay up.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from encoders.shared.messages import PROTOCOL, Hello
from encoders.shared.session import CoreSession

from ..conftest import Sockets, endpoint

UNACKED_S = 1.0


@pytest.fixture
def blackhole() -> Iterator[Callable[[int], Callable[[], None]]]:
    """``drop(port)``: every TCP packet to ``port`` on the loopback dropped (a dead link) until the
    function it returns is called; every rule removed at the end, pass or fail."""
    iptables = shutil.which("iptables")
    if iptables is None:
        pytest.fail("iptables not found: apt-get install -y iptables")
    rules: list[list[str]] = []

    def undo(rule: list[str]) -> None:
        if rule in rules:
            rules.remove(rule)
            subprocess.run([iptables, "-D", *rule], capture_output=True, timeout=10)

    def drop(port: int) -> Callable[[], None]:
        rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
        subprocess.run([iptables, "-I", *rule], check=True, capture_output=True, timeout=10)
        rules.append(rule)
        return lambda: undo(rule)

    try:
        yield drop
    finally:
        for rule in list(rules):
            undo(rule)


def disconnected_after(sock: zmq.Socket, monitor: zmq.Socket, limit_s: float) -> float | None:
    """Send into the link until its connection is dropped: the seconds that took (None: not within limit_s)."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < limit_s:
        try:
            sock.send(b"heartbeat", zmq.NOBLOCK)  # as the session does every second: data to acknowledge
        except zmq.Again:
            pass
        while monitor.poll(100):
            if recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                return elapsed
    return None


def port_of(sock: zmq.Socket) -> int:
    return int(endpoint(sock).rsplit(":", 1)[1])


def started_link(sockets: Sockets, router: zmq.Socket, **options) -> tuple[zmq.Socket, zmq.Socket]:
    """A DEALER as a session opens it, connected to ``router`` and heard by it; and its monitor."""
    dealer = sockets.connect(zmq.DEALER, endpoint(router), identity=b"peer", **options)
    monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
    sockets.adopt(monitor)
    dealer.send(b"hello")
    assert router.poll(5000) and router.recv_multipart() == [b"peer", b"hello"]
    return dealer, monitor


@pytest.mark.firewall
def test_a_dead_link_is_dropped_and_connected_again_within_the_unacknowledged_time(sockets, blackhole):
    router = sockets.bind(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # as the core's: a peer's new connection takes its identity
    dealer, monitor = started_link(sockets, router, unacked_s=UNACKED_S)
    restore = blackhole(port_of(router))
    took = disconnected_after(dealer, monitor, 30)
    assert took is not None, "the dead link was not dropped within 30 s"
    # TCP_USER_TIMEOUT counts from the first unacknowledged byte; the retransmission that notices comes after.
    print(f"a dead link dropped {took:.2f} s after its first unacknowledged send (unacked_s {UNACKED_S:g})")
    assert UNACKED_S <= took < UNACKED_S + 5, took
    restore()  # the link comes back: ZeroMQ has connected again, and messages go through
    dealer.send(b"again")
    assert router.poll(10_000), "nothing came over the new connection"
    assert router.recv_multipart()[-1] in (b"heartbeat", b"again")

    # Without it, the same dead link is kept (TCP's retries take some 15 minutes): not dropped in
    # three times as long as it took above.
    other = sockets.bind(zmq.ROUTER)
    plain, plain_monitor = started_link(sockets, other)
    blackhole(port_of(other))
    assert disconnected_after(plain, plain_monitor, max(3 * took, 3.0)) is None


def test_the_recorders_session_which_has_no_zmtp_heartbeats_drops_links_unacknowledged_for_its_timeout(sockets):
    core = sockets.bind(zmq.ROUTER)
    hello = lambda: Hello("recorder", "test", PROTOCOL)  # noqa: E731
    quiet = CoreSession(sockets.ctx, endpoint(core), hello, heartbeat_s=0.5, misses=4, zmtp_heartbeats=False)
    usual = CoreSession(sockets.ctx, endpoint(core), hello, heartbeat_s=0.5, misses=4)
    try:
        assert quiet.sock.getsockopt(zmq.TCP_MAXRT) == 2000 and quiet.sock.getsockopt(zmq.HEARTBEAT_IVL) == 0
        assert usual.sock.getsockopt(zmq.TCP_MAXRT) == 0 and usual.sock.getsockopt(zmq.HEARTBEAT_IVL) == 500
    finally:
        quiet.sock.close(0)
        usual.sock.close(0)
