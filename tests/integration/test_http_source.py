"""The MJPEG camera's feed (services/ingest/http_source.py, http_connect.py) against real sockets:
redirects, credentials in the URL, HTTPS, a body of a given length, and the clocks that must not
run while the ingest holds the camera back. (The ingest as a process against real servers, with the
byte variants cameras send, stalls and reconnections: test_ingest.py.)"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from encoders.services.ingest.errors import StreamError
from encoders.services.ingest.feed import drive
from encoders.services.ingest.http_source import READ_BYTES, HttpMjpegSource, read_first_frame
from encoders.services.ingest.pictures import JpegFrame
from encoders.services.ingest.reader import ReaderEnded

from ..conftest import self_signed
from .test_ingest import JPEGS, RawServer, _multipart, make_jpeg

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=FRAME\r\n"
BODY = _multipart(JPEGS, delimiter=b"--FRAME", length_header=b"Content-Length")


class Server(RawServer):
    """A RawServer (test_ingest.py) that answers each request with what ``answer(path)`` gives, over TLS
    if given, then holds the connection open until closed (so that only the answer's own framing can
    end a body). Keeps each request's head."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.tls = answer, tls
        self.heads: list[bytes] = []
        super().__init__(b"")
        self.port = self.server.getsockname()[1]

    def address(self, path: str, scheme: str = "http", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}{path}"

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            with conn:
                request = self.read_request(conn)
                if request is None:
                    return
                self.heads.append(request)
                conn.sendall(self.answer(request.split(b" ")[1].decode()))
                self.closed.wait()
        except OSError:  # the client went (or refused the certificate)
            pass

    def header(self, i: int, name: bytes) -> bytes | None:
        for line in self.heads[i].split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


@pytest.fixture
def server() -> Iterator:
    made: list[Server] = []

    def start(answer, tls: ssl.SSLContext | None = None) -> Server:
        made.append(Server(answer, tls))
        return made[-1]

    yield start
    for s in made:
        s.close()


def events(source: HttpMjpegSource, limit: int = 100) -> list:
    """The feed's events until its end (or ``limit``)."""
    got = []
    try:
        for event in drive(source):
            got.append(event)
            if len(got) >= limit:
                break
    finally:
        source.close()
    return got


def jpegs(feed: Iterator, n: int) -> list[bytes]:
    """The next ``n`` events, each a frame: their JPEGs."""
    frames = [next(feed) for _ in range(n)]
    assert all(isinstance(f, JpegFrame) for f in frames), frames
    return [f.jpeg for f in frames]


def source(url: str, **kw) -> HttpMjpegSource:
    return HttpMjpegSource(url, connect_timeout=5, read_timeout=5, reconnect=False, **kw)


def test_a_body_of_a_given_length_ends_there_though_the_connection_stays_open(server):
    s = server(lambda path: HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    src = source(s.address("/stream.mjpg"))
    got = events(src)
    assert [e.jpeg for e in got[:-1]] == JPEGS
    assert got[-1] == ReaderEnded("ended", "the server ended the stream")
    assert src.counters["truncated"] == 0 and src.counters["stalls"] == 0


def test_a_redirect_is_followed_and_the_credentials_go_along_to_the_same_host(server):
    def answer(path: str) -> bytes:
        if path == "/old":
            return b"HTTP/1.1 302 Found\r\nLocation: /stream.mjpg\r\nContent-Length: 0\r\n\r\n"
        return HEAD + b"Connection: close\r\n\r\n" + BODY + b"--FRAME--\r\n"

    s = server(answer)
    got = events(source(s.address("/old", userinfo="pi:p%40ss@")))
    assert [e.jpeg for e in got if isinstance(e, JpegFrame)] == JPEGS
    assert [r.split(b" ")[1] for r in s.heads] == [b"/old", b"/stream.mjpg"]
    basic = b"Basic " + base64.b64encode(b"pi:p@ss")  # the password percent-decoded
    assert s.header(0, b"authorization") == basic and s.header(1, b"authorization") == basic
    assert s.header(1, b"accept-encoding") == b"identity"


def test_a_redirect_to_another_host_does_not_take_the_credentials(server):
    target = server(lambda path: HEAD + b"\r\n" + BODY + b"--FRAME--\r\n")
    elsewhere = target.address("/stream.mjpg").replace("127.0.0.1", "localhost")
    first = server(lambda path: b"HTTP/1.1 301 Moved\r\nLocation: %s\r\n\r\n" % elsewhere.encode())
    got = events(source(first.address("/", userinfo="pi:secret@")))
    assert [e.jpeg for e in got if isinstance(e, JpegFrame)] == JPEGS
    assert first.header(0, b"authorization") is not None and target.header(0, b"authorization") is None


def test_endless_redirects_are_said_so(server):
    s = server(lambda path: b"HTTP/1.1 302 Found\r\nLocation: /again\r\n\r\n")
    with pytest.raises(StreamError, match="more than 10 redirects"):
        read_first_frame(s.address("/"), connect_timeout=2, read_timeout=2)


def test_an_https_camera_is_read_when_its_certificate_is_trusted_and_refused_when_not(server, tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    s = server(lambda path: HEAD + b"\r\n" + BODY + b"--FRAME--\r\n", tls)
    url = s.address("/stream.mjpg", scheme="https")
    with pytest.raises(StreamError, match="CERTIFICATE_VERIFY_FAILED"):
        read_first_frame(url, connect_timeout=5, read_timeout=5)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # OpenSSL's own setting: trust this certificate
    got = events(source(url))
    assert [e.jpeg for e in got if isinstance(e, JpegFrame)] == JPEGS
    assert got[-1] == ReaderEnded("ended", "the server ended the stream")


def test_the_time_the_ingest_holds_the_camera_back_is_not_a_stall(server):
    """Lossless, the ingest stops taking frames while it waits for credit, however long: the read
    timeout and the stall clock count only the time it wanted frames and none came. Frames larger than
    one read: the first read after the hold completes none."""
    big = make_jpeg(1280, 960, 9)
    assert len(big) > 2 * READ_BYTES
    answer = HEAD + b"\r\n" + _multipart([big] * 40, delimiter=b"--FRAME")  # 30 MB: made once, before
    s = server(lambda path: answer)
    src = HttpMjpegSource(s.address("/stream.mjpg"), connect_timeout=5, read_timeout=0.3, stall_after=0.3)
    try:
        feed = drive(src)
        assert jpegs(feed, 1) == [big]
        src.watch(time.monotonic(), False)  # held back, as the ingest does while no credit comes
        time.sleep(1.0)  # a hold of three timeouts
        src.watch(time.monotonic(), True)
        assert jpegs(feed, 10) == [big] * 10
        assert src.counters["stalls"] == 0 and src.counters["connects"] == 1
    finally:
        src.close()
