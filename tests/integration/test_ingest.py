"""ingest as a real process (`python -m encoders ingest`) against real HTTP servers: pisim,
and raw socket servers sending the byte variants real cameras send. A stand-in core
(tests/fake_core.py: a ROUTER in a thread of its own) takes its session, as the core would."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from encoders.services.ingest.config import IngestConfig
from encoders.services.ingest.http_source import READ_BYTES
from encoders.services.ingest.main import check
from encoders.services.pisim.config import PisimConfig
from encoders.services.pisim.main import serve_in_thread
from encoders.shared.messages import Bye, CaptureEnded, Credit, Heartbeat, Hello, Stats

from ..conftest import Sockets, free_port, spoil, wait_for
from ..fake_core import Capture, FakeCore

STREAM_ID = "cam-test"
PICTURES_AFTER_BYE_S = 3.0  # how long until_bye waits for pictures still on their way after the Bye
W, H = 160, 120


def make_jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


class Harness:
    """A stand-in core around one ingest process."""

    def __init__(self, tmp_path: Path, sockets: Sockets) -> None:
        self.sockets = sockets
        self.procs: list[subprocess.Popen] = []
        self.cores: list[FakeCore] = []
        self.core = self.new_core()
        self.log_path = tmp_path / "ingest.log"

    def new_core(self, **kw) -> FakeCore:
        core = FakeCore(self.sockets.bind(zmq.ROUTER), roles={"ingest"}, **kw)
        self.cores.append(core)
        return core

    def start(self, url: str, *args: str, core: str | None = None, env: dict | None = None) -> subprocess.Popen:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "encoders",
                    "ingest",
                    "--stream",
                    url,
                    "--stream-id",
                    STREAM_ID,
                    "--core",
                    core or self.core.endpoint,
                    "--connect-timeout",
                    "2",
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
            )
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        return self.log_path.read_text()

    def until_bye(self, timeout: float = 15.0) -> tuple[list[Capture], CaptureEnded, Stats]:
        """Once the ingest has said Bye: its captures, its CaptureEnded and its final Stats."""
        try:
            self.core.wait(Bye, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()}") from None
        (ended,) = self.core.messages(CaptureEnded)
        stats = self.core.messages(Stats)[-1]
        # The pictures travel on the data link, another connection than the session's Bye: on a busy machine
        # the last may come just after it. Waited for (a few seconds at most), as many as the ingest sent.
        sent = stats.counters.get("published", 0) - stats.counters.get("undelivered", 0)
        deadline = time.monotonic() + PICTURES_AFTER_BYE_S
        while len(self.core.messages(Capture)) < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.core.messages(Capture), ended, stats

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for core in self.cores:
            core.close()


@pytest.fixture
def h(tmp_path, sockets):
    harness = Harness(tmp_path, sockets)
    yield harness
    harness.close()


@pytest.fixture
def pisim():
    servers = []

    def start(**settings):
        server, url = serve_in_thread(PisimConfig(**{"port": 0, "width": W, "height": H, "fps": 30, **settings}))
        servers.append(server)
        return server, url + "/stream.mjpg"

    yield start
    for server in servers:
        server.close()


class RawServer:
    """A camera server we control byte for byte: every connection gets ``response`` (sent in
    small pieces), then the connection is closed, or held open with nothing more (``stall``),
    or with one more byte every ``trickle`` seconds, or with endless bytes as fast as the
    client reads them (``flood``)."""

    def __init__(
        self, response: bytes, *, stall: bool = False, trickle: float = 0.0, flood: bool = False, piece: int = 97
    ) -> None:
        self.response, self.stall, self.piece = response, stall, piece
        self.trickle, self.flood = trickle, flood
        self.sent_after = 0  # bytes sent after the response, over all connections
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/stream.mjpg"
        self.connections = 0
        self.requests = 0  # whole requests read: the client is waiting for the answer
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def read_request(conn: socket.socket) -> bytes | None:
        """A request's head, or None if the client went before it ended."""
        request = b""
        while b"\r\n\r\n" not in request:
            data = conn.recv(4096)
            if not data:
                return None
            request += data
        return request

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.read_request(conn) is None:
                return
            self.requests += 1
            try:
                for i in range(0, len(self.response), self.piece):
                    conn.sendall(self.response[i : i + self.piece])
                    if i % (self.piece * 8) == 0:
                        time.sleep(0.001)  # paces the pieces, so that some arrive as separate reads
                if self.stall:
                    self.closed.wait()
                while self.trickle and not self.closed.wait(self.trickle):
                    conn.sendall(b"x")
                    self.sent_after += 1
                junk = b"\x00" * 65536
                while self.flood and not self.closed.is_set():
                    conn.sendall(junk)
                    self.sent_after += len(junk)
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        self.server.close()
        self.thread.join(2)


@pytest.fixture
def raw_server():
    servers = []

    def start(response: bytes, **kw) -> RawServer:
        servers.append(RawServer(response, **kw))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def decoded_size(jpeg: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(jpeg))
    img.load()  # a full decode: what ingest publishes is a real picture
    return img.size


# -- captures, credit, the core ---------------------------------------------------------------------


def non_heartbeats(core: FakeCore) -> list[type]:
    """The kinds of what came on the session, heartbeats left out, in order. Not the pictures (the fake
    core's Captures), which come on the data link, another connection: no order holds between the two."""
    return [type(r.msg) for r in core.received() if not isinstance(r.msg, Heartbeat | Capture)]


def test_every_frame_goes_to_the_core_in_order_then_its_end_and_bye(h, pisim):
    _, url = pisim()
    t0 = time.time()
    proc = h.start(url, "--max-frames", "15")
    captures, ended, stats = h.until_bye()
    assert proc.wait(10) == 0
    (hello,) = h.core.messages(Hello)
    assert (hello.role, hello.stream, hello.url, hello.lossless, hello.undelivered) == (
        "ingest",
        STREAM_ID,
        url,
        False,
        0,
    )
    # The camera is read once the core has answered: a core that is up gets every frame.
    assert len(captures) == 15
    for c in captures:
        assert (c.width, c.height) == (W, H) and decoded_size(c.jpeg) == (W, H)
        assert t0 <= c.t_capture <= time.time()
    assert [c.t_capture for c in captures] == sorted(c.t_capture for c in captures)
    assert ended.reason == "max_frames (15) read"
    assert ended.counts == {"corrupt": 0, "reconnects": 0, "truncated": 0}
    c = stats.counters
    assert (c["read"], c["published"], c["undelivered"], c["corrupt"]) == (15, 15, 0, 0)
    assert non_heartbeats(h.core)[-3:] == [Stats, CaptureEnded, Bye]


def test_lossless_sends_only_against_credit_and_holds_the_camera_back(h, pisim):
    # The camera sends full-size frames as fast as it can (hundreds a second here).
    server, url = pisim(fps=0, width=640, height=480)
    h.core.credit = 1  # in the Welcome
    proc = h.start(url, "--lossless", "--max-frames", "20")
    for i in range(20):
        h.core.wait(Capture, i + 1)
        time.sleep(0.075)  # paces: a slow pipeline, ~13 frames a second
        assert len(h.core.messages(Capture)) == i + 1, "a capture sent without credit"
        h.core.send(Credit(1))
    captures, _, stats = h.until_bye()
    assert proc.wait(10) == 0
    assert len(captures) == 20 and stats.counters["undelivered"] == 0
    assert h.core.messages(Hello)[0].lossless
    # Backpressure: the camera sent what ingest took plus the frames of one read and what the TCP
    # buffers hold (a few MB), not the several hundred frames it could have sent in that time.
    assert server.health()["frames_served"] < 20 + READ_BYTES // len(captures[0].jpeg) + 1 + 200


def test_credit_that_is_not_a_count_is_dropped_and_counted_and_the_stream_goes_on(h, pisim):
    """Issue #13: ingest died on a Credit whose n was "abc", NaN, inf or None."""
    _, url = pisim()
    h.core.credit = 0
    proc = h.start(url, "--lossless", "--max-frames", "5")
    h.core.wait(Hello)
    for n in ("abc", math.nan, math.inf, None, -1, 2**63):
        h.core.send(spoil(Credit(1), n=n))
    h.core.send(Credit(5))
    captures, _, stats = h.until_bye()
    assert proc.wait(10) == 0
    assert len(captures) == 5 and stats.counters["bad_messages"] == 6
    assert h.log().count("does not decode") == 1


def test_json_logs_are_one_object_a_line_with_the_stream(h, pisim):
    """Issue #15: ENCODERS_LOG_FORMAT=json, for log shippers."""
    _, url = pisim()
    proc = h.start(url, "--max-frames", "5", env={"ENCODERS_LOG_FORMAT": "json"})
    h.until_bye()
    assert proc.wait(10) == 0
    lines = [json.loads(line) for line in h.log().splitlines()]  # every line parses
    assert {line["service"] for line in lines} == {"ingest"} and {line["stream"] for line in lines} == {STREAM_ID}
    assert {"time", "level", "message"} <= set(lines[0]) and any("max_frames" in x["message"] for x in lines)


def test_a_dropped_stream_is_reconnected_and_captures_go_on(h, pisim):
    server, url = pisim(max_frames=5)  # pisim ends each connection after 5 frames
    proc = h.start(url, "--max-frames", "12", "--reconnect-max", "0.3")
    captures, ended, _ = h.until_bye()
    assert proc.wait(10) == 0
    assert len(captures) == 12 and ended.counts["reconnects"] == 2
    assert server.health()["clients_served"] == 3
    log = h.log()
    assert log.count("the server ended the stream") == 2
    assert "reconnecting to" in log and "reconnected to" in log


def test_while_the_core_is_away_frames_are_counted_and_told_then_a_restarted_core_gets_hello(h, pisim):
    _, url = pisim()
    # Both sides on one heartbeat, as every service of a pipeline is: each counts the other gone after 0.6 s.
    h.core = h.new_core(heartbeat_s=0.2)
    proc = h.start(url, env={"ENCODERS_HEARTBEAT_S": "0.2"})
    h.core.wait(Capture, 5)
    h.core.answering = False  # a core that hangs: the ingest gives up on it, says Hello again and again
    h.core.wait(Hello, 3)
    sent = len(h.core.messages(Capture))
    h.core.answering = True
    h.core.wait(Capture, sent + 5)  # captures go on once a Hello is welcomed
    resumed = h.core.received(Capture)[sent].t
    hellos = [r.msg for r in h.core.received(Hello) if r.t < resumed]
    assert all(a.undelivered <= b.undelivered for a, b in itertools.pairwise(hellos))  # each says it all
    welcomed = hellos[-1]
    assert welcomed.undelivered > 0  # what the camera sent meanwhile, for the core to count as dropped
    h.core.restart()  # a core that restarted: the next capture is answered "say Hello again"
    h.core.wait(Hello, 5)
    h.core.wait(Capture, sent + 10)
    proc.send_signal(signal.SIGTERM)
    _, _, stats = h.until_bye()
    assert proc.wait(10) == 0
    c = stats.counters
    assert c["read"] == c["published"] + c["undelivered"] and c["undelivered"] >= welcomed.undelivered
    assert c["lives"] == 3
    log = h.log()
    assert "has been silent" in log and "does not know this session" in log


def _multipart(
    jpegs,
    *,
    delimiter=b"--myboundary",
    nl=b"\r\n",
    headers=(b"Content-Type: image/jpeg",),
    length_header: bytes | None = None,
) -> bytes:
    out = b""
    for jpeg in jpegs:
        hdrs = list(headers) + ([length_header + b": " + str(len(jpeg)).encode()] if length_header else [])
        out += delimiter + nl + nl.join(hdrs) + nl + nl + jpeg + nl
    return out


JPEGS = [make_jpeg(40, 30, 1), make_jpeg(64, 48, 2), make_jpeg(32, 32, 3), make_jpeg(50, 20, 4)]


def _chunked(body: bytes, size: int = 1000) -> bytes:
    return (
        b"".join(b"%x\r\n" % len(body[i : i + size]) + body[i : i + size] + b"\r\n" for i in range(0, len(body), size))
        + b"0\r\n\r\n"
    )


VARIANTS = {
    # Boundary only in the body, no Content-Length, LF line ends, lower-case headers, a
    # preamble, a part that is not a JPEG, and a closing boundary.
    "boundary-in-body": (
        b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace\r\n\r\n"
        + b"preamble junk\n"
        + _multipart(
            [JPEGS[0], b"<html>error</html>", JPEGS[1], JPEGS[2]], nl=b"\n", headers=(b"content-type: image/jpeg",)
        )
        + b"--myboundary--\n",
        JPEGS[:3],
        {"corrupt": 1, "truncated": 0},
    ),
    # Boundary declared with its dashes, upper-case headers with Content-Length, and the
    # connection closed in the middle of the last part.
    "declared-with-dashes-truncated": (
        b"HTTP/1.0 200 OK\r\ncontent-type: Multipart/X-Mixed-Replace;boundary=--myboundary\r\n\r\n"
        + _multipart(JPEGS, headers=(b"CONTENT-TYPE: image/jpeg",), length_header=b"CONTENT-LENGTH")[:-1000],
        JPEGS[:3],
        {"corrupt": 0, "truncated": 1},
    ),
    # HTTP/1.1 chunked transfer encoding around a well-formed stream.
    "chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=FRAME\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + _chunked(_multipart(JPEGS, delimiter=b"--FRAME", length_header=b"Content-Length") + b"--FRAME--\r\n"),
        JPEGS,
        {"corrupt": 0, "truncated": 0},
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_streams_as_cameras_send_them(h, raw_server, variant):
    response, expected, counts = VARIANTS[variant]
    server = raw_server(response)
    h.core.credit = 100
    proc = h.start(server.url, "--lossless", "--no-reconnect")
    captures, ended, stats = h.until_bye()
    assert proc.wait(10) == 0
    assert [c.jpeg for c in captures] == expected  # byte for byte; the corrupt part never sent
    assert [(c.width, c.height) for c in captures] == [decoded_size(j) for j in expected]
    assert ended.counts == {"reconnects": 0, **counts}
    assert ended.reason == "the camera's stream ended (the server ended the stream)"
    assert (stats.counters["published"], stats.counters["undelivered"]) == (len(expected), 0)
    assert server.connections == 1


def test_a_stalled_stream_times_out_and_is_reconnected(h, raw_server):
    part = _multipart([JPEGS[1]], delimiter=b"--FRAME", length_header=b"Content-Length")
    server = raw_server(
        b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=FRAME\r\n\r\n" + part, stall=True
    )
    proc = h.start(server.url, "--read-timeout", "0.5", "--reconnect-max", "0.2", "--max-frames", "2")
    captures, ended, _ = h.until_bye()
    assert proc.wait(10) == 0
    assert [c.jpeg for c in captures] == [JPEGS[1]] * 2 and ended.counts["reconnects"] == 1
    assert server.connections == 2
    log = h.log()
    assert "no data for 0.5 s (read timeout: the stream stalled)" in log and "reconnecting to" in log


def test_thousands_of_corrupt_parts_are_counted_and_logged_once(h, raw_server):
    junk = [b"<html>error %d</html>" % i for i in range(3000)]
    body = _multipart([*junk, JPEGS[0]], delimiter=b"--FRAME") + b"--FRAME--\r\n"
    server = raw_server(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=FRAME\r\n\r\n" + body)
    h.core.credit = 10
    proc = h.start(server.url, "--lossless", "--no-reconnect")
    captures, ended, _ = h.until_bye()
    assert proc.wait(10) == 0
    assert [c.jpeg for c in captures] == [JPEGS[0]] and ended.counts["corrupt"] == 3000
    assert h.log().count("corrupt frame") == 1, "one line for the first, then only the count"


def test_a_part_larger_than_max_frame_bytes_is_dropped_and_counted(h, raw_server):
    big = make_jpeg(640, 480, 9)
    assert len(big) > 4096 > max(len(j) for j in JPEGS)
    body = _multipart([JPEGS[0], big, JPEGS[1]], delimiter=b"--FRAME") + b"--FRAME--\r\n"
    server = raw_server(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=FRAME\r\n\r\n" + body)
    h.core.credit = 10
    proc = h.start(server.url, "--lossless", "--no-reconnect", "--max-frame-bytes", "4096")
    captures, _, stats = h.until_bye()
    assert proc.wait(10) == 0
    assert [c.jpeg for c in captures] == [JPEGS[0], JPEGS[1]] and stats.counters["oversized"] == 1


# A part that starts, then never ends: what a stuck camera or a hostile server sends.
ENDLESS_PART = b"--FRAME\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8"


@pytest.mark.parametrize("how", ["trickle", "flood"])
def test_a_stream_that_sends_bytes_but_no_frame_is_noticed_and_reopened(h, raw_server, how):
    """Issue #13: bytes keep arriving (one a second, or as fast as they are read: a part that
    never ends), so the read timeout never fires; no complete frame for --stall-after seconds
    is a stall: said, counted, and the connection reopened."""
    import psutil

    part = _multipart([JPEGS[1]], delimiter=b"--FRAME", length_header=b"Content-Length")
    head = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=FRAME\r\n\r\n"
    server = raw_server(head + part + ENDLESS_PART, **({"trickle": 0.2} if how == "trickle" else {"flood": True}))
    proc = h.start(server.url, "--stall-after", "1.5", "--read-timeout", "5", "--reconnect-max", "0.2")
    wait_for(lambda: server.connections >= 3, 20, "two stalls and a third connection")
    h.core.wait(Capture, 3, timeout=20)  # the third connection's frame read too (a flood delays it)
    assert proc.poll() is None
    rss = psutil.Process(proc.pid).memory_info().rss
    proc.send_signal(signal.SIGTERM)
    captures, ended, stats = h.until_bye()
    assert proc.wait(10) == 0
    assert len(captures) >= 3 and {c.jpeg for c in captures} == {JPEGS[1]}  # one per connection
    assert stats.counters["stalls"] >= 2 and ended.counts["reconnects"] >= 2
    log = h.log()
    assert "stalled: " in log and "no complete frame (ENCODERS_STALL_AFTER=1.5)" in log
    assert server.sent_after > (4 if how == "trickle" else 10_000_000)  # bytes did keep coming
    # The part that never ends is held up to its cap (32 MB), not without bound.
    assert rss < 400 * 2**20, f"{rss / 2**20:.0f} MB resident"


# -- stopping -------------------------------------------------------------------------------------


def test_sigterm_sends_the_last_stats_the_end_and_bye(h, pisim):
    _, url = pisim()
    proc = h.start(url)
    wait_for(lambda: [s for s in h.core.messages(Stats) if s.counters["published"] >= 3], 10, "Stats")
    stats = h.core.messages(Stats)[-1]  # every second
    assert (stats.service, stats.stream) == ("ingest", STREAM_ID)
    assert stats.counters["fps"] > 0 and stats.counters["joined"] == 1
    proc.send_signal(signal.SIGTERM)
    captures, ended, last = h.until_bye()
    assert proc.wait(10) == 0
    assert ended.reason == "the ingest was stopped"
    assert last.counters["published"] == len(captures) and last.counters["undelivered"] == 0
    assert "received SIGTERM" in h.log()


def test_a_stop_from_the_core_ends_the_stream(h, pisim):
    _, url = pisim()
    proc = h.start(url)
    h.core.wait(Capture, 3)
    h.core.stop("the pipeline is stopping")
    captures, ended, stats = h.until_bye()
    assert proc.wait(10) == 0
    assert ended.reason == "stopped by the core (the pipeline is stopping)"
    assert stats.counters["published"] == len(captures)


@pytest.mark.parametrize("stalls", ["mid-stream", "before-answering"])
def test_sigterm_stops_promptly_while_the_camera_stalls(h, raw_server, stalls):
    part = _multipart([JPEGS[0]], delimiter=b"--FRAME", length_header=b"Content-Length")
    head = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=FRAME\r\n\r\n"
    server = raw_server(head + part if stalls == "mid-stream" else b"", stall=True)
    proc = h.start(server.url, "--read-timeout", "60")
    if stalls == "mid-stream":
        h.core.wait(Capture)
    else:
        wait_for(lambda: server.requests, 10, "ingest's request to the camera")  # the answer never comes
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - t0 < 3.5  # not the 60 s read timeout
    captures, _, stats = h.until_bye(timeout=2)  # delivered although the reader was still waiting
    published = 1 if stalls == "mid-stream" else 0
    assert len(captures) == stats.counters["published"] == published


def test_without_reconnect_an_unreachable_camera_is_an_error(h):
    proc = h.start(f"http://127.0.0.1:{free_port()}/stream.mjpg", "--no-reconnect")
    captures, ended, stats = h.until_bye()
    assert proc.wait(10) == 1
    assert not captures and stats.counters["read"] == 0
    assert ended.reason.startswith("the camera failed (connection refused")


def test_what_prevents_starting_is_said_in_one_line_and_exits_2(h, pisim):
    _, url = pisim()
    assert h.start(url, core="tcp://nonsense").wait(10) == 2  # no port: ZeroMQ refuses it
    assert h.start("ftp://camera/stream").wait(10) == 2
    refusing = h.new_core(refuse="64 streams already")
    assert h.start(url, core=refusing.endpoint).wait(10) == 2
    lines = [line for line in h.log().splitlines() if "ERROR" in line]
    assert len(lines) == 3 and "Traceback" not in h.log(), h.log()
    assert "cannot start: cannot connect tcp://nonsense" in lines[0]
    assert "cannot start: invalid stream URL 'ftp://camera/stream'" in lines[1]
    assert f"the core at {refusing.endpoint} refused this ingest: 64 streams already" in lines[2]


def test_a_core_that_does_not_answer_is_said_within_seconds_naming_the_setting(h, pisim):
    _, url = pisim()
    nobody = f"tcp://127.0.0.1:{free_port()}"
    proc = h.start(url, core=nobody, env={"ENCODERS_HEARTBEAT_S": "0.2"})
    wait_for(lambda: "no answer from the core" in h.log(), 10, "the warning")
    assert f"no answer from the core at {nobody} (ENCODERS_CORE)" in h.log()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "it does not hear the stream ended" in h.log()


# -- encoders ingest --test -------------------------------------------------------------------------


def test_connection_test_command(pisim):
    _, url = pisim()
    ok = subprocess.run(
        [sys.executable, "-m", "encoders", "ingest", "--stream", url, "--test"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert re.fullmatch(rf"OK: {re.escape(url)} sent a {W}x{H} JPEG \(\d+ KB\) in \d+ ms\n", ok.stdout)
    closed = f"http://127.0.0.1:{free_port()}/stream.mjpg"
    bad = subprocess.run(
        [sys.executable, "-m", "encoders", "ingest", "--stream", closed, "--test"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1 and not bad.stdout
    assert f"FAILED: {closed}: connection refused" in bad.stderr


def test_connection_test_says_why_it_failed(pisim, raw_server, capsys):
    _, url = pisim()
    base = url.rsplit("/", 1)[0]
    stalled = raw_server(
        b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=FRAME\r\n\r\n", stall=True
    )
    corrupt_only = raw_server(
        b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=FRAME\r\n\r\n"
        + _multipart([b"\xff\xd8 not really", b"nope"], delimiter=b"--FRAME")
        + b"--FRAME--\r\n"
    )
    # 2: the URL cannot work as given; 1: the camera may be away, or sent nothing usable in time.
    cases = [
        (base + "/nothing", "HTTP 404", 2),
        (base + "/health", "not an MJPEG stream: Content-Type 'application/json'", 2),
        (stalled.url, "no data for 0.5 s", 1),
        (corrupt_only.url, "2 corrupt part(s)", 1),
        ("ftp://camera/stream", "invalid stream URL", 2),
    ]
    for stream, reason, code in cases:
        assert check(IngestConfig(stream=stream, connect_timeout=1.0, read_timeout=0.5)) == code
        err = capsys.readouterr().err
        assert f"FAILED: {stream}: " in err and reason in err, err
