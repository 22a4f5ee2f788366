"""Open an MJPEG camera's HTTP connection, up to its response's head: the blocking part of reading it.

Connecting waits (DNS, TCP, TLS, the camera's answer), so it runs in a short-lived thread of
its own; what it hands back is a socket switched to non-blocking and the body bytes that came
with the head, and the ingest's main thread reads the rest of the body itself (http_source.py).
h11 (the sans-I/O HTTP/1.1 library under httpx) writes the request and parses the answer; the
sockets, timeouts, redirects and the URL's credentials are here. httpx is not used, because it
cannot hand over a connection: its body is read only through its own blocking iterator.
"""

from __future__ import annotations

import base64
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import h11

from encoders.shared.masking import mask

from .errors import REFUSED, Stalled, StreamError, UnusableStream

REQUEST_HEADERS = [
    ("Accept", "multipart/x-mixed-replace, image/jpeg;q=0.9, */*;q=0.1"),
    # The body is split as sent: ask the server not to compress it.
    ("Accept-Encoding", "identity"),
    ("User-Agent", "encoders-ingest"),
]
MAX_REDIRECTS = 10
HEAD_READ = 64 * 1024  # bytes asked of the socket at a time while the head is read
REDIRECTS = (301, 302, 303, 307, 308)
UNUSABLE = (401, 403, 404, 410)  # only another URL or credentials help


@dataclass
class Opened:
    """A connection whose response's head has been read: status 200."""

    sock: socket.socket  # non-blocking from here on
    content_type: str
    body: bytes  # the body's first bytes, received with the head (dechunked)
    length: int | None  # Content-Length: the body ends after that many bytes; None: at the close
    dechunk: h11.Connection | None  # chunked transfer encoding: the rest of the body goes through it


def check_url(url: str) -> None:
    """UnusableStream unless ``url`` is http(s)://host[:port][/path]."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - ValueError if it is not a number
    except ValueError as exc:
        raise UnusableStream(f"invalid stream URL {mask(url)!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UnusableStream(f"invalid stream URL {mask(url)!r}: expected http://host:port/path")


def open_stream(url: str, *, connect_timeout: float, read_timeout: float) -> Opened:
    """Connect, ask for ``url``, follow redirects, and read the answer's head; StreamError saying why not."""
    for _ in range(MAX_REDIRECTS + 1):
        sock, conn = _request(url, connect_timeout, read_timeout)
        try:
            response, body = _head(sock, conn, read_timeout)
            if response.status_code in REDIRECTS and (location := _header(response, b"location")):
                url = _redirected(url, location)
                sock.close()
                continue
            if response.status_code != 200:
                error = UnusableStream if response.status_code in UNUSABLE else StreamError
                raise error(f"HTTP {response.status_code} {response.reason.decode('latin-1')}".rstrip())
        except BaseException:
            sock.close()
            raise
        chunked = b"chunked" in _header(response, b"transfer-encoding").lower()
        length = _header(response, b"content-length")
        sock.setblocking(False)
        return Opened(
            sock,
            _header(response, b"content-type").decode("latin-1"),
            body,
            int(length) if length and not chunked else None,  # h11 has checked it is a number
            conn if chunked else None,
        )
    raise StreamError(f"more than {MAX_REDIRECTS} redirects")


def _redirected(url: str, location: bytes) -> str:
    """Where a redirect points; UnusableStream if not to another http(s) URL. Credentials go along
    only to the same host (as browsers and httpx do)."""
    target = urljoin(url, location.decode("latin-1"))
    check_url(target)
    old, new = urlsplit(url), urlsplit(target)
    if old.username and not new.username and (old.hostname, old.port) == (new.hostname, new.port):
        target = new._replace(netloc=f"{old.netloc.rpartition('@')[0]}@{new.netloc}").geturl()
    return target


def _request(url: str, connect_timeout: float, read_timeout: float) -> tuple[socket.socket, h11.Connection]:
    """A connection to the URL's host with the GET written on it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    tls = parts.scheme.lower() == "https"
    port = parts.port or (443 if tls else 80)
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except TimeoutError:
        raise StreamError(f"no answer within {connect_timeout:g} s (connect timeout)") from None
    except ConnectionRefusedError:
        raise StreamError(REFUSED) from None
    except socket.gaierror as exc:
        raise StreamError(f"unknown host ({exc})") from None
    except OSError as exc:
        raise StreamError(f"cannot connect: {exc}") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            except TimeoutError:
                raise StreamError(f"no answer within {connect_timeout:g} s (connect timeout, TLS)") from None
            except (ssl.SSLError, OSError) as exc:
                raise StreamError(f"cannot connect: {exc}") from None
        conn = h11.Connection(h11.CLIENT)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = [("Host", parts.netloc.rpartition("@")[2]), *REQUEST_HEADERS]
        if parts.username is not None:
            user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers.append(("Authorization", "Basic " + base64.b64encode(user_password).decode()))
        sock.settimeout(read_timeout)
        try:
            sock.sendall(conn.send(h11.Request(method="GET", target=target, headers=headers)))
            sock.sendall(conn.send(h11.EndOfMessage()))
        except TimeoutError:
            raise StreamError(f"could not send the request within {read_timeout:g} s") from None
        except OSError as exc:
            raise StreamError(f"connection lost: {exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock, conn


def _head(sock: socket.socket, conn: h11.Connection, read_timeout: float) -> tuple[h11.Response, bytes]:
    """The response's head (after any 1xx), and the body bytes that came with it."""
    response = None
    body = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise StreamError(f"the server broke the connection: {exc}") from None
        if event is h11.NEED_DATA:
            if response is not None:
                return response, b"".join(body)
            try:
                data = sock.recv(HEAD_READ)
            except TimeoutError:
                raise Stalled.no_data(read_timeout) from None
            except OSError as exc:
                raise StreamError(f"connection lost: {exc}") from None
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            if response is None:
                raise StreamError("the server broke the connection: it closed before answering")
            return response, b"".join(body)  # the whole body came with the head: the end is read next


def _header(response: h11.Response, name: bytes) -> bytes:
    """A header's value (h11 lowercases names), the last if repeated; b"" if absent."""
    value = b""
    for key, v in response.headers:
        if key == name:
            value = v
    return value
