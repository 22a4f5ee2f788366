"""The core (`encoders metrics`) as a real process, its peers sessions of the test: a pipeline run and
stopped, a worker vanishing, a flapping connection, and start-up failures in one line."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from encoders.shared import zmqio
from encoders.shared.messages import (
    PROTOCOL,
    Ack,
    Acks,
    Assigned,
    Bye,
    Captured,
    CaptureEnded,
    CaptureNote,
    Draining,
    Embedding,
    EndOfStream,
    Frame,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    Ready,
    Records,
    Results,
    Stats,
    Stop,
    Stopped,
    Welcome,
    Workers,
    rows_of,
)
from encoders.shared.session import CoreSession

from ..conftest import endpoint, free_port, receive, wait_for

# Peers count as gone after 1.5 s: a vanished worker is noticed at once, while a busy machine
# that stalls a process for half a second does not end a session.
HEARTBEAT_S = 0.5


def start_core(service, tmp_path, *extra: str):
    eps = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("core", "frames", "metrics")}
    core = service(
        "metrics",
        "--core-bind",
        eps["core"],
        "--frames-bind",
        eps["frames"],
        "--metrics-bind",
        eps["metrics"],
        "--state-dir",
        str(tmp_path / "state"),
        "--heartbeat-s",
        str(HEARTBEAT_S),
        *extra,
    )
    return core, eps


_ids = itertools.count(1)
_CAPTURES: dict[int, tuple[float, bytes]] = {}  # by the id each went under: its time, its JPEG


def send_capture_of(ingest: CoreSession, t: float, jpeg: bytes) -> None:
    """A capture as an ingest announces it (protocol 3): a Captured of one row; its JPEG kept here."""
    i = next(_ids)
    _CAPTURES[i] = (t, jpeg)
    ingest.send(Captured.of([CaptureNote(i, t, len(jpeg), 2, 2)]), time.monotonic())


class Peers:
    """Sessions of the test with the core, each with what to do with the messages it gets.

    Protocol 3: the data links are stood in for here. An ingest's Workers names each worker by its
    Hello's data address (``ipc://NAME``); its Assigned hands each picture to that worker's ``on``, as
    the Frame its data socket would take (``assigned``: every decision, as (seq, worker number))."""

    def __init__(self, sockets, core: str) -> None:
        self.sockets, self.core = sockets, core
        self.sessions: list[tuple[CoreSession, Callable[[CoreSession, Message, float], None]]] = []
        self.numbers: dict[int, str] = {}  # worker number -> its name
        self.assigned: list[tuple[int, int]] = []

    def _data_link(self, ingest: CoreSession, msg: Message, now: float) -> bool:
        """Whether ``msg`` was the data links' (taken here)."""
        if isinstance(msg, Workers):
            if ingest.hello().role == "ingest":  # a worker's Workers is its admit list: not the links
                self.numbers = {int(n): link["address"].removeprefix("ipc://") for n, link in msg.links.items()}
            return True
        if not isinstance(msg, Assigned):
            return False
        stream = ingest.hello().stream or ""
        for row in msg.rows():
            self.assigned.append((row.seq, row.worker))
            name = self.numbers.get(row.worker)
            for s, on in list(self.sessions):
                if name is not None and s.hello().name == name and s.hello().role == "worker":
                    t, jpeg = _CAPTURES[row.id]
                    on(s, Frame(stream, row.seq, t, 2, 2, jpeg), now)
        return True

    def add(self, hello: Hello, on: Callable[[CoreSession, Message, float], None], **kw) -> CoreSession:
        s = CoreSession(self.sockets.ctx, self.core, lambda: hello, heartbeat_s=HEARTBEAT_S, **kw)
        self.sockets.adopt(s.sock)
        s.start(time.monotonic())
        self.sessions.append((s, on))
        return s

    def named(self, name: str) -> CoreSession:
        return next(s for s, _ in self.sessions if s.hello().name == name)

    def remove(self, session: CoreSession) -> None:
        self.sessions = [(s, on) for s, on in self.sessions if s is not session]

    def pump(self, seconds: float = 0.02) -> None:
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            for s, on in list(self.sessions):
                for msg in list(s.take(now)):
                    if not self._data_link(s, msg, now):
                        on(s, msg, now)
                if not s.sock.closed:  # (an ingest told to Stop leaves)
                    s.tick(now)
            if now >= deadline:
                return
            zmq.select([s.sock for s, _ in self.sessions], [], [], 0.005)

    def until(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}: " + "; ".join(
                f"{s.hello().name} {s.identity.hex()} joined={s.joined} lives={s.lives} {s.counters}"
                for s, _ in self.sessions
            )
            self.pump()


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.timeout(90)
def test_a_pipeline_runs_loses_a_vanished_workers_frames_at_once_and_stops_with_totals(service, sockets, tmp_path):
    core, eps = start_core(service, tmp_path, "--max-wait", "30")  # losses must not wait for max_wait
    peers = Peers(sockets, eps["core"])
    got: dict[str, list[Message]] = {"ingest": [], "recorder": [], "control": []}
    held_by_b: list[Frame] = []
    b_answers = True

    def ingest_on(s: CoreSession, msg: Message, now: float) -> None:
        got["ingest"].append(msg)
        if isinstance(msg, Stop):
            s.send(CaptureEnded("told to stop"), now)
            s.close(now, "stopped")
            peers.remove(s)

    def worker(name: str) -> Callable[[CoreSession, Message, float], None]:
        def on(s: CoreSession, msg: Message, now: float) -> None:
            if isinstance(msg, Frame):
                if name == "b" and not b_answers:
                    held_by_b.append(msg)
                    return
                vector = unit(1, msg.seq % 3)
                s.send(Results.of([Embedding(msg.stream, msg.seq, msg.t_capture, name, "m", vector=vector)]), now)

        return on

    def recorder_on(s: CoreSession, msg: Message, now: float) -> None:
        got["recorder"].extend(rows_of(msg))  # a Records: its records
        if isinstance(msg, Records):
            last = msg.rows()[-1]
            s.send(Acks.of([Ack(last.stream, last.seq)]), now)
        elif isinstance(msg, EndOfStream):
            s.send(Acks.of([Ack(msg.stream, msg.last_seq, ended=True)]), now)

    ingest = peers.add(Hello("ingest", "cam", PROTOCOL, stream="cam0", url="http://cam"), ingest_on)
    peers.add(Hello("worker", "a", PROTOCOL, capacity=2, model="m", dim=2, data="ipc://a"), worker("a"))
    b = peers.add(Hello("worker", "b", PROTOCOL, capacity=2, model="m", dim=2, data="ipc://b"), worker("b"))
    peers.add(
        Hello("recorder", "rec", PROTOCOL),
        recorder_on,
        on_join=lambda w: peers.named("rec").send(Ready("run-1", {}), time.monotonic()),
    )
    peers.until(lambda: all(s.joined for s, _ in peers.sessions), 20, "every session to be welcomed")

    sent = 0

    def send_capture() -> None:
        nonlocal sent
        send_capture_of(ingest, time.time(), b"jpeg%d" % sent)
        sent += 1
        peers.pump(0.01)

    for _ in range(20):
        send_capture()
    b_answers = False  # b keeps what it is handed from now on, then vanishes without a word
    while not held_by_b:  # (a, answering at once, has more room from now on: b gets one)
        assert sent < 40, "worker b was handed nothing"
        send_capture()
    b.sock.close(0)
    peers.remove(b)
    vanished = time.monotonic()

    def lost_counted() -> bool:
        recs = [m for m in got["recorder"] if isinstance(m, MetricsRecord)]
        return bool(recs) and recs[-1].counts["lost"] >= len(held_by_b)

    while sent < 60:
        send_capture()
    peers.until(lost_counted, 10, "b's frames counted lost")
    assert time.monotonic() - vanished < 8  # its silence (1.5 s), not max_wait (30 s)

    peers.add(
        Hello("control", "ctl", PROTOCOL),
        lambda s, msg, now: got["control"].append(msg),
        on_join=lambda w: peers.named("ctl").send(Stop("test over"), time.monotonic()),
    )
    peers.until(lambda: any(isinstance(m, Stopped) for m in got["control"]), 30, "Stopped")
    # What the drain waited for, said while it lasted (at once, then every 5 s), then Stopped: nothing else.
    *draining, stopped = got["control"]
    assert isinstance(stopped, Stopped) and all(isinstance(m, Draining) for m in draining), got["control"]
    c = stopped.streams["cam0"]
    assert c["published"] == 60
    assert c["embedded"] + c["dropped"] + c["skipped"] + c["lost"] == 60
    assert c["lost"] == len(held_by_b)
    peers.until(lambda: isinstance(got["recorder"][-1], Stop), 10, "the recorder's Stop")
    assert core.wait(20) == 0

    recs = [m for m in got["recorder"] if isinstance(m, MetricsRecord)]
    assert [r.seq for r in recs] == sorted(r.seq for r in recs) and len(recs) == c["embedded"]
    assert recs[0].similarity is None and recs[0].core == recs[-1].core != ""
    eos = got["recorder"][-2]  # then the recorder was told to Stop
    assert isinstance(eos, EndOfStream) and eos.last_seq == 59 and eos.counts == c
    assert isinstance(got["recorder"][-1], Stop)
    assert "Traceback" not in core.output()


def connect_watched(sockets, endpoint: str, identity: bytes) -> tuple[zmq.Socket, zmq.Socket]:
    """A DEALER connected to ``endpoint``, and the monitor of its handshakes, attached before it
    connects (attached after, it may miss a handshake that was quicker)."""
    sock = sockets.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(endpoint)
    return sock, monitor


def connected(sock: zmq.Socket, monitor: zmq.Socket, timeout: float) -> None:
    """Until ZeroMQ has made the socket's connection (its handshake done), or AssertionError."""
    try:
        assert monitor.poll(int(timeout * 1000)), "no connection to the core"
        recv_monitor_message(monitor)
    finally:
        sock.disable_monitor()
        monitor.close(0)


@pytest.mark.timeout(60)
def test_a_flapping_connection_never_inflates_a_workers_capacity(service, sockets, tmp_path):
    core, eps = start_core(service, tmp_path, "--no-recorder")
    identity = b"flappy-worker"

    def connect() -> zmq.Socket:
        return sockets.connect(zmq.DEALER, eps["core"], identity=identity)

    sock = connect()
    zmqio.send(sock, Hello("worker", "flappy", PROTOCOL, capacity=2, model="m", dim=2))
    assert isinstance(receive(sock, 20), Welcome)
    for _ in range(5):  # the same session's TCP connection closed and opened again: no Hello
        sock.close(0)
        sock, monitor = connect_watched(sockets, eps["core"], identity)
        connected(sock, monitor, 10)  # each flap a real connection to the core, which hears the session on it
        zmqio.send(sock, Heartbeat())
    stats = sockets.connect(zmq.SUB, eps["metrics"], subscribe=[b"stats/"])
    peers = Peers(sockets, eps["core"])
    ingest = peers.add(Hello("ingest", "cam", PROTOCOL, stream="cam0"), lambda s, m, now: None)
    peers.until(lambda: ingest.joined, 20, "the ingest's Welcome")
    for i in range(10):
        send_capture_of(ingest, time.time(), b"jpeg%d" % i)
        peers.pump(0.05)
        zmqio.send(sock, Heartbeat())

    def counted() -> Stats | None:
        msg = receive(stats, 5, topic=True)
        zmqio.send(sock, Heartbeat())
        return msg if isinstance(msg, Stats) and msg.counters.get("in_use") == 2 else None

    last = wait_for(counted, 10, "the core's Stats")
    assert (last.counters["workers"], last.counters["capacity"], last.counters["in_use"]) == (1, 2, 2)
    peers.pump(0.2)
    assert [seq for seq, worker in peers.assigned if worker] == [0, 1]  # capacity 2, once
    zmqio.send(sock, Bye())
    assert core.stop() == 0


def startup_errors(output: str) -> list[str]:
    """The ERROR lines of a service's log (the settings banner names every endpoint too)."""
    return [line for line in output.splitlines() if " ERROR " in line]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["core_bind", "frames_bind", "metrics_bind"])
def test_a_port_already_bound_exits_2_with_one_line_naming_it(service, sockets, tmp_path, which):
    busy = endpoint(sockets.bind(zmq.PULL))  # something else holds the port
    env = {
        f"ENCODERS_{name.upper()}": f"tcp://127.0.0.1:{free_port()}"
        for name in ("core_bind", "frames_bind", "metrics_bind")
    }
    env[f"ENCODERS_{which.upper()}"] = busy
    metrics = service("metrics", env={**env, "ENCODERS_STATE_DIR": str(tmp_path)})
    assert metrics.wait(30) == 2
    output = metrics.output()
    (line,) = startup_errors(output)
    assert f"cannot bind {busy}" in line
    assert "Traceback" not in output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", ["tcp://nonsense", "nonsense://x"])
def test_an_endpoint_that_does_not_parse_exits_2_with_one_line_naming_it(service, tmp_path, bad):
    metrics = service("metrics", env={"ENCODERS_CORE_BIND": bad, "ENCODERS_STATE_DIR": str(tmp_path)})
    assert metrics.wait(30) == 2
    output = metrics.output()
    (line,) = startup_errors(output)
    assert f"cannot bind {bad}" in line
    assert "Traceback" not in output


@pytest.mark.timeout(60)
def test_a_state_folder_another_core_holds_exits_2_with_one_line(service, tmp_path):
    first, _ = start_core(service, tmp_path)
    wait_for(lambda: "core " in first.output(), 20, "the first core to start")
    second, _ = start_core(service, tmp_path)
    assert second.wait(30) == 2
    (line,) = startup_errors(second.output())
    assert "is in use by another core" in line and "ENCODERS_STATE_DIR" in line
    assert first.stop() == 0
