"""The web viewer's door (services/viewer/web/guard.py) and its parameters, against a real viewer
process (issue #22): a slow upload is not a slow header, one client's idle sockets do not shut
out the others, strangers' connections go quickly, and a bad parameter is a 400, never a 500."""

from __future__ import annotations

import os
import select
import socket
import time
import urllib.parse

import httpx
import pytest

from ..conftest import Service, endpoint, free_port, wait_for

TOKEN = "t0ken"


def start_viewer(service, publishers, *extra: str, env: dict[str, str]) -> tuple[Service, int]:
    frames, metrics = publishers
    port = free_port()
    viewer = service(
        "view", "--frames", endpoint(frames), "--metrics", endpoint(metrics), "--web", f"127.0.0.1:{port}",
        *extra, env={"DISPLAY": "", **env},
    )  # fmt: skip
    wait_for(lambda: viewer.proc.poll() is not None or "web viewer on" in viewer.output(), 20, "the web server")
    assert viewer.proc.poll() is None, viewer.output()
    return viewer, port


def connect_from(source: str, port: int) -> socket.socket:
    """A TCP connection to the viewer from ``source``, an address of the loopback (127.0.0.0/8: the
    viewer sees another client for each)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def web_counts(port: int, source: str = "127.0.0.2") -> dict:
    """The door's counts, asked by a token holder from ``source``."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        answer = client.get(f"http://127.0.0.1:{port}/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    return answer.json()["web"]


def closed_now(socks: list[socket.socket], wait_s: float) -> list[socket.socket]:
    """Those of ``socks`` the server has closed, waiting at most ``wait_s`` for the first."""
    readable, _, _ = select.select(socks, [], [], wait_s)
    out = []
    for sock in readable:
        try:
            if sock.recv(1) == b"":
                out.append(sock)
        except ConnectionError:
            out.append(sock)
    return out


def wait_closed(socks: list[socket.socket], timeout_s: float, what: str) -> None:
    left = list(socks)
    deadline = time.monotonic() + timeout_s
    while left:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{len(left)} of {len(socks)} {what} still open after {timeout_s} s"
        for sock in closed_now(left, remaining):
            left.remove(sock)


@pytest.mark.timeout(120)
def test_a_slow_upload_is_not_a_slow_header_but_a_stalled_body_is_cut(service, publishers, database):
    """Issue #22: a 1.27 MB picture sent in 15 s was cut at 11 s as a "header timeout": every
    body byte started the headers' deadline again. The deadline is the headers' alone; a body
    that keeps coming is taken, one that stops for ENCODERS_WEB_BODY_TIMEOUT is cut."""
    env = {"ENCODERS_WEB_HEADER_TIMEOUT": "1", "ENCODERS_WEB_BODY_TIMEOUT": "2", "ENCODERS_WEB_TOKEN_TIMEOUT": "1"}
    viewer, port = start_viewer(service, publishers, "--web-token", TOKEN, "--database-url", database, env=env)
    picture = b"\xff\xd8" + os.urandom(1_300_000) + b"\xff\xd9"
    boundary = "encoders-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + picture
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /api/search?k=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    upload = socket.create_connection(("127.0.0.1", port))
    upload.sendall(head)
    started = time.monotonic()
    chunks = [body[i : i + 40_000] for i in range(0, len(body), 40_000)]
    for chunk in chunks:  # over 3 s: three header timeouts, one body timeout and a half; never a pause of one
        upload.sendall(chunk)
        time.sleep(3.0 / len(chunks))  # the pace of a slow link, not a wait for anything
    took = time.monotonic() - started
    upload.settimeout(30)
    answer = b""
    while chunk := upload.recv(65536):
        answer += chunk
    upload.close()
    assert took > 2.5 and answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b'"results": []' in answer or b'"results":[]' in answer, answer[-300:]

    # The same upload stopping halfway: cut once the body has not come for 2 s.
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(head + body[: len(body) // 2])
    wait_closed([stalled], 20, "stalled upload")
    stalled.close()
    web = web_counts(port)
    assert web["header_timeouts"] == 0 and web["body_timeouts"] == 1, web
    assert viewer.output().count("its request's body stopped coming for 2 s") == 1


@pytest.mark.timeout(120)
def test_one_clients_idle_sockets_do_not_shut_out_a_token_holder_and_go_quickly(service, publishers):
    """Issue #22: 64 idle sockets from anyone without the token filled the cap of all
    connections and reset every other client for 10 s, again and again. One client (address)
    now holds ENCODERS_WEB_MAX_PER_CLIENT at most, and a connection on which no request has
    shown the token is closed after ENCODERS_WEB_TOKEN_TIMEOUT, long before the header timeout."""
    env = {"ENCODERS_WEB_MAX_PER_CLIENT": "8", "ENCODERS_WEB_TOKEN_TIMEOUT": "2", "ENCODERS_WEB_HEADER_TIMEOUT": "30"}
    viewer, port = start_viewer(service, publishers, "--web-token", TOKEN, env=env)
    flood = [connect_from("127.0.0.1", port) for _ in range(64)]  # idle: not a byte sent
    # A token holder from another address is served at once, while the flood is open...
    assert wait_for(lambda: web_counts(port)["refused"] == 56, 10, "the flood's 56 past its 8 refused")
    # ... and a stranger asking without the token, again and again on one connection, goes too.
    asking = connect_from("127.0.0.3", port)
    for _ in range(3):
        asking.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b" 401 " in asking.recv(65536).split(b"\r\n", 1)[0]
    wait_closed([*flood, asking], 20, "strangers' connections")
    web = web_counts(port)
    assert web["token_timeouts"] == 9 and web["header_timeouts"] == 0 and web["refused"] == 56, web
    for sock in [*flood, asking]:
        sock.close()
    log = viewer.output()
    assert log.count("refused a web connection") == 1 and log.count("no request with the token within 2 s") == 1


@pytest.mark.timeout(120)
def test_at_the_servers_cap_a_token_holder_takes_the_place_of_a_stranger(service, publishers):
    """Strangers from many addresses fill ENCODERS_WEB_MAX_CONNECTIONS: the oldest of them makes
    room for the newcomer, so a token holder is served; the ones vouched for are never the ones closed."""
    env = {"ENCODERS_WEB_MAX_CONNECTIONS": "4", "ENCODERS_WEB_TOKEN_TIMEOUT": "60"}
    viewer, port = start_viewer(service, publishers, "--web-token", TOKEN, env=env)
    # A video watched by a token holder: vouched for, so never made to leave.
    video = connect_from("127.0.0.2", port)
    video.sendall(f"GET /video.mjpg?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    video.settimeout(10)
    assert b" 200 " in video.recv(65536).split(b"\r\n", 1)[0]
    strangers = [connect_from(f"127.0.0.{10 + i}", port) for i in range(3)]  # the cap, with the video
    web = web_counts(port, "127.0.0.3")  # a seat: the oldest stranger's
    assert web["evicted"] == 1 and web["refused"] == 0, web
    assert closed_now(strangers, 5) == [strangers[0]]
    assert not closed_now([video], 0.2), "the video being watched was closed"
    for sock in [video, *strangers]:
        sock.close()
    assert "to make room (ENCODERS_WEB_MAX_CONNECTIONS)" in viewer.output()


def get(port: int, path: str, **params: str) -> httpx.Response:
    query = urllib.parse.urlencode(params)
    return httpx.get(f"http://127.0.0.1:{port}{path}?{query}", timeout=10)


@pytest.mark.timeout(60)
def test_a_bad_parameter_is_a_400_that_says_what_is_wrong(service, publishers):
    """Issue #22: '²' passed str.isdigit and failed int() (500), '99999999999w' and 0001-01-01
    overflowed (500), a NUL character reached the database (503). Each is the request's fault:
    a 400 naming the parameter, before any database is asked (this one is unreachable)."""
    viewer, port = start_viewer(
        service, publishers, "--database-url", "postgresql://nobody@127.0.0.1:1/none", env={"TZ": "UTC"}
    )
    cases = [
        ("/api/frame.jpg", {"run": "r", "stream": "cam0", "seq": "²"}, "seq must be a whole number"),
        ("/api/frame.jpg", {"run": "r", "stream": "cam0", "seq": "1" * 20}, "seq must be a whole number"),
        ("/api/frame.jpg", {"run": "r\0x", "stream": "cam0", "seq": "1"}, "run holds a NUL character"),
        ("/api/timeline", {"points": "²²"}, "points must be a whole number"),
        ("/api/timeline", {"since": "99999999999w"}, "a time out of range: '99999999999w'"),
        ("/api/timeline", {"until": "0001-01-01"}, "a time out of range: '0001-01-01'"),
        ("/api/timeline", {"run": "a\0b"}, "run holds a NUL character"),
        ("/api/timeline", {"stream": "\0"}, "stream holds a NUL character"),
        ("/api/search", {"text": "a dog", "k": "²"}, "k must be a whole number"),
        ("/api/search", {"text": "a dog", "since": "99999999999w"}, "a time out of range"),
        ("/api/search", {"text": "a dog", "run": "r\0"}, "run holds a NUL character"),
        ("/api/search", {"frame": "r:cam0:²"}, "the sequence number '²' is not a whole number"),
    ]
    for path, params, says in cases:
        answer = get(port, path, **params)
        assert answer.status_code == 400 and says in answer.json()["error"], (path, params, answer.text)
    # A good query gets as far as the database, which is not there: 503, as before.
    assert get(port, "/api/timeline", since="2h").status_code == 503
    assert viewer.proc.poll() is None
