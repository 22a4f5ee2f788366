"""ingest as a real process (`python -m encoders ingest`) against real HTTP servers: pisim,
and raw socket servers sending the byte variants real cameras send. Test ZeroMQ sockets
stand in for the viewer (SUB), encoder workers (DEALER) and metrics (PULL)."""

from __future__ import annotations

import io
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
from encoders.services.ingest.main import check
from encoders.services.pisim.config import PisimConfig
from encoders.services.pisim.main import serve_in_thread
from encoders.shared import zmqio
from encoders.shared.messages import Credit, Dropped, EndOfStream, Frame, Stats, StreamStart

from ..conftest import Sockets, endpoint, free_port, receive, wait_for

STREAM_ID = "cam-test"
W, H = 160, 120


def receive_frame(worker: zmq.Socket, timeout: float = 5.0) -> Frame:
    """The next frame ingest gives a worker (its DEALER)."""
    msg = receive(worker, timeout)
    assert isinstance(msg, Frame), msg
    return msg


def make_jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


class Harness:
    """ZeroMQ test sockets (from the sockets fixture) around one ingest process."""

    def __init__(self, tmp_path: Path, sockets: Sockets) -> None:
        self.tmp_path = tmp_path
        self.sockets = sockets
        self.procs: list[subprocess.Popen] = []
        self.pull = sockets.bind(zmq.PULL)
        self.metrics_in = endpoint(self.pull)
        self.frames_ep = f"tcp://127.0.0.1:{free_port()}"
        self.work_ep = f"tcp://127.0.0.1:{free_port()}"
        self.log_path = tmp_path / "ingest.log"
        self.notices: list = []

    def sub(self) -> zmq.Socket:
        return self.sockets.connect(zmq.SUB, self.frames_ep, subscribe=[b""])

    def worker(self, credit: int = 0, identity: bytes = b"worker-1") -> zmq.Socket:
        sock = self.sockets.connect(zmq.DEALER, self.work_ep, identity=identity)
        if credit:
            zmqio.send(sock, Credit(identity.decode(), credit))
        return sock

    def start(self, url: str, *args: str) -> subprocess.Popen:
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
                    "--frames-bind",
                    self.frames_ep,
                    "--work-bind",
                    self.work_ep,
                    "--metrics-in",
                    self.metrics_in,
                    "--connect-timeout",
                    "2",
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        return self.log_path.read_text()

    def notices_until(self, condition, timeout: float = 15.0) -> list:
        """Receive metrics notices until ``condition(notices)``; returns all received so far."""
        deadline = time.monotonic() + timeout
        while not condition(self.notices):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; notices so far: {self.notices[-5:]}\n{self.log()}")
            if self.pull.poll(int(min(left, 0.2) * 1000)):
                self.notices.append(receive(self.pull, 0))
        return self.notices

    def until_eos(self, timeout: float = 15.0) -> tuple[list, EndOfStream]:
        notices = self.notices_until(lambda n: n and isinstance(n[-1], EndOfStream), timeout)
        return notices, notices[-1]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


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
    small pieces), then the connection is closed, or held open with nothing more (``stall``)."""

    def __init__(self, response: bytes, *, stall: bool = False, piece: int = 97) -> None:
        self.response, self.stall, self.piece = response, stall, piece
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

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(4096)
                if not data:
                    return
                request += data
            self.requests += 1
            try:
                for i in range(0, len(self.response), self.piece):
                    conn.sendall(self.response[i : i + self.piece])
                    if i % (self.piece * 8) == 0:
                        time.sleep(0.001)  # paces the pieces, so that some arrive as separate reads
                if self.stall:
                    self.closed.wait()
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


# -- frames, numbering, credit ----------------------------------------------------------------------


def test_frames_are_published_in_order_and_dropped_when_no_worker_is_free(h, pisim):
    _, url = pisim()
    sub = h.sub()
    t0 = time.time()
    proc = h.start(url, "--max-frames", "15")
    notices, eos = h.until_eos()
    assert proc.wait(10) == 0

    start = notices[0]
    assert isinstance(start, StreamStart) and (start.stream, start.first_seq, start.url) == (STREAM_ID, 0, url)
    dropped = [n for n in notices if isinstance(n, Dropped)]
    assert [d.seq for d in dropped] == list(range(15))
    assert {d.reason for d in dropped[:-1]} == {"no free encoder"}
    assert dropped[-1].reason == "shutdown"  # the one frame still waiting when ingest stopped
    assert eos.last_seq == 14
    assert eos.counts == {
        "published": 15,
        "dispatched": 0,
        "dropped": 15,
        "corrupt": 0,
        "reconnects": 0,
        "truncated": 0,
    }

    published = []
    while True:
        msg = receive(sub, 5, topic=True)
        if isinstance(msg, EndOfStream):
            break
        if isinstance(msg, Frame):
            published.append(msg)
        else:
            assert isinstance(msg, (Stats, StreamStart))
    # A subscriber waiting for ingest to start gets every frame from the first.
    assert [f.seq for f in published] == list(range(15))
    for f in published:
        assert (f.stream, f.width, f.height) == (STREAM_ID, W, H)
        assert decoded_size(f.jpeg) == (W, H)
        assert t0 <= f.t_capture <= time.time()
    assert [f.t_capture for f in published] == sorted(f.t_capture for f in published)


def test_a_worker_gets_exactly_the_frames_it_gives_credit_for(h, pisim):
    _, url = pisim()
    worker = h.worker(credit=4)
    proc = h.start(url, "--max-frames", "24")
    got = [receive_frame(worker) for _ in range(4)]
    # Frames now wait or are dropped until the worker asks for more.
    h.notices_until(lambda n: any(isinstance(m, Dropped) and m.seq > got[-1].seq for m in n))
    zmqio.send(worker, Credit("worker-1", 2))
    got += [receive_frame(worker) for _ in range(2)]
    notices, eos = h.until_eos()
    assert proc.wait(10) == 0
    assert not worker.poll(300), "a frame the worker did not ask for"

    seqs = [f.seq for f in got]
    assert seqs == sorted(seqs) and all(f.stream == STREAM_ID and decoded_size(f.jpeg) == (W, H) for f in got)
    dropped = [n.seq for n in notices if isinstance(n, Dropped)]
    assert sorted(seqs + dropped) == list(range(24))  # each frame dispatched or dropped, once
    assert eos.counts["published"] == 24
    assert (eos.counts["dispatched"], eos.counts["dropped"]) == (6, 18)
    assert "encoder worker 'worker-1' joined with 4 credit(s)" in h.log()


def test_a_worker_that_has_gone_is_forgotten(h, pisim):
    _, url = pisim()
    worker = h.worker(credit=1000, identity=b"leaver")
    proc = h.start(url, "--max-frames", "20")
    receive_frame(worker)
    receive_frame(worker)
    worker.close(0)
    _, eos = h.until_eos()
    assert proc.wait(10) == 0
    c = eos.counts
    assert c["published"] == 20 == c["dispatched"] + c["dropped"]
    assert c["dropped"] > 0  # once it was gone, nobody had credit
    assert re.search(r"worker 'leaver' is gone \(disconnected\): forgot its \d+ credit", h.log())


def test_lossless_mode_drops_nothing_and_holds_the_camera_back(h, pisim):
    # The camera sends full-size frames as fast as it can (hundreds a second here).
    server, url = pisim(fps=0, width=640, height=480)
    worker = h.worker(credit=1)
    proc = h.start(url, "--lossless", "--max-frames", "20")
    got = []
    for _ in range(20):
        got.append(receive_frame(worker))
        time.sleep(0.075)  # paces: a slow encoder, ~13 frames a second
        zmqio.send(worker, Credit("worker-1", 1))
    notices, eos = h.until_eos()
    assert proc.wait(10) == 0
    assert [f.seq for f in got] == list(range(20))
    assert not [n for n in notices if isinstance(n, Dropped)]
    assert (eos.counts["published"], eos.counts["dispatched"], eos.counts["dropped"]) == (20, 20, 0)
    # Backpressure: the camera sent what ingest took plus what the TCP buffers hold
    # (a few MB), not the several hundred frames it could have sent in that time.
    assert server.health()["frames_served"] < 20 + 200


# -- the connection ---------------------------------------------------------------------------------


def test_a_dropped_stream_is_reconnected_and_seq_continues(h, pisim):
    server, url = pisim(max_frames=5)  # pisim ends each connection after 5 frames
    proc = h.start(url, "--max-frames", "12", "--reconnect-max", "0.3")
    notices, eos = h.until_eos()
    assert proc.wait(10) == 0
    assert [n.seq for n in notices if isinstance(n, Dropped)] == list(range(12))
    assert (eos.counts["published"], eos.counts["reconnects"], eos.last_seq) == (12, 2, 11)
    assert server.health()["clients_served"] == 3
    log = h.log()
    assert log.count("the server ended the stream") == 2
    assert "reconnecting to" in log and "reconnected to" in log


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
    worker = h.worker(credit=100)
    proc = h.start(server.url, "--lossless", "--no-reconnect")
    _, eos = h.until_eos()
    assert proc.wait(10) == 0
    got = []
    while worker.poll(300):
        got.append(receive_frame(worker))
    assert [f.jpeg for f in got] == expected  # byte for byte; the corrupt part never published
    assert [f.seq for f in got] == list(range(len(expected)))
    assert [(f.width, f.height) for f in got] == [decoded_size(j) for j in expected]
    assert eos.counts == {
        "published": len(expected),
        "dispatched": len(expected),
        "dropped": 0,
        "reconnects": 0,
        **counts,
    }
    assert server.connections == 1
    assert "the server ended the stream" in h.log()


def test_a_stalled_stream_times_out_and_is_reconnected(h, raw_server):
    part = _multipart([JPEGS[1]], delimiter=b"--FRAME", length_header=b"Content-Length")
    server = raw_server(
        b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=FRAME\r\n\r\n" + part, stall=True
    )
    worker = h.worker(credit=10)
    proc = h.start(server.url, "--read-timeout", "0.5", "--reconnect-max", "0.2", "--max-frames", "2")
    _, eos = h.until_eos()
    assert proc.wait(10) == 0
    assert [receive_frame(worker).seq for _ in range(2)] == [0, 1]
    assert (eos.counts["published"], eos.counts["reconnects"]) == (2, 1)
    assert server.connections == 2
    log = h.log()
    assert "no data for 0.5 s (read timeout: the stream stalled)" in log and "reconnecting to" in log


# -- stopping -------------------------------------------------------------------------------------


def test_sigterm_sends_end_of_stream_and_a_late_credit_still_gets_the_pending_frame(h, pisim):
    _, url = pisim()
    sub = h.sub()
    worker = h.worker()  # connected, but asks for nothing yet
    proc = h.start(url)
    h.notices_until(lambda n: sum(isinstance(m, Dropped) for m in n) >= 3)
    while not isinstance(stats := receive(sub, 3, topic=True), Stats):  # published every second
        pass
    assert (stats.service, stats.stream) == ("ingest", STREAM_ID)
    published, fps = stats.counters["published"], stats.counters["fps"]
    assert published is not None and published >= 3 and fps is not None and fps > 0
    assert stats.counters["pending"] == 1 and stats.counters["dispatched"] == 0  # nobody asked for frames
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "received SIGTERM" in h.log(), 5, "ingest to take the SIGTERM")
    zmqio.send(worker, Credit("worker-1", 5))  # within the second ingest waits for a worker
    notices, eos = h.until_eos()
    assert proc.wait(10) == 0
    frame = receive_frame(worker)
    assert frame.seq == eos.last_seq  # the newest frame, which was waiting
    assert not worker.poll(200)
    assert not [n for n in notices if isinstance(n, Dropped) and n.reason == "shutdown"]
    c = eos.counts
    assert c["dispatched"] == 1 and c["published"] == c["dropped"] + 1 == eos.last_seq + 1
    while not isinstance(msg := receive(sub, 5, topic=True), EndOfStream):
        pass
    assert msg.last_seq == eos.last_seq  # viewers and the recorder hear of the end too
    assert "received SIGTERM" in h.log()


@pytest.mark.parametrize("stalls", ["mid-stream", "before-answering"])
def test_sigterm_stops_promptly_while_the_camera_stalls(h, raw_server, stalls):
    part = _multipart([JPEGS[0]], delimiter=b"--FRAME", length_header=b"Content-Length")
    head = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=FRAME\r\n\r\n"
    server = raw_server(head + part if stalls == "mid-stream" else b"", stall=True)
    worker = h.worker(credit=10)
    proc = h.start(server.url, "--read-timeout", "60")
    if stalls == "mid-stream":
        assert receive_frame(worker).seq == 0
    else:
        wait_for(lambda: server.requests, 10, "ingest's request to the camera")  # the answer never comes
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - t0 < 3.5  # not the 60 s read timeout
    _, eos = h.until_eos(timeout=2)  # delivered although the reader was still waiting
    published = 1 if stalls == "mid-stream" else 0
    assert (eos.last_seq, eos.counts["published"]) == (published - 1, published)


def test_without_reconnect_an_unreachable_camera_is_an_error(h):
    proc = h.start(f"http://127.0.0.1:{free_port()}/stream.mjpg", "--no-reconnect")
    _, eos = h.until_eos()
    assert proc.wait(10) == 1
    assert eos.last_seq == -1 and eos.counts["published"] == 0
    assert "connection refused" in h.log()


def test_what_prevents_starting_is_said_in_one_line_and_exits_2(h, pisim):
    _, url = pisim()
    h.sockets.bind(zmq.PUB, h.frames_ep)  # something else holds the port
    assert h.start(url).wait(10) == 2
    assert h.start("ftp://camera/stream").wait(10) == 2
    lines = [line for line in h.log().splitlines() if "ERROR" in line]
    assert len(lines) == 2 and "Traceback" not in h.log()
    assert f"cannot start: cannot bind {h.frames_ep}" in lines[0]
    assert "cannot start: invalid stream URL 'ftp://camera/stream'" in lines[1]


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
    cases = [
        (base + "/nothing", "HTTP 404"),
        (base + "/health", "not an MJPEG stream: Content-Type 'application/json'"),
        (stalled.url, "no data for 0.5 s"),
        (corrupt_only.url, "2 corrupt part(s)"),
        ("ftp://camera/stream", "invalid stream URL"),
    ]
    for stream, reason in cases:
        assert check(IngestConfig(stream=stream, connect_timeout=1.0, read_timeout=0.5)) == 1
        err = capsys.readouterr().err
        assert f"FAILED: {stream}: " in err and reason in err, err
