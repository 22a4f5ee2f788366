"""Split an MJPEG-over-HTTP body (multipart/x-mixed-replace) into its JPEG parts.

Written by hand because no well-kept library parses an *endless* multipart body
incrementally: the stdlib's email parser and the multipart form parsers want the whole
body, or a well-formed one. Cameras are not well-formed; this splitter accepts what they
actually send:

- the boundary declared in the Content-Type header, or only found in the body (the first
  ``--xxx`` line), with or without the ``--`` prefix quirks (``boundary=--frame`` and then
  ``--frame`` or ``----frame`` in the body);
- parts with a Content-Length header (the body is then skipped without scanning) or
  without one (the body ends at the next boundary line);
- header names in any case, CRLF or LF line ends, a part with no headers at all;
- garbage before the first boundary, a closing ``--boundary--``, a stream that stops
  mid-part (``finish()`` counts it as truncated).

It is fed whatever the socket returns, split anywhere. The buffer is scanned once: each
search starts where the previous one stopped (``bytes.find`` with a start offset), and
consumed bytes are dropped only when they are most of the buffer, so the work per byte
stays constant however the stream is chunked.
"""

from __future__ import annotations

from email.message import Message
from email.utils import collapse_rfc2231_value

# A part larger than this is a broken stream (a missed boundary), not a frame: dropped.
MAX_PART_BYTES = 32 * 1024 * 1024
# Longer header blocks are garbage; so are longer "boundary lines" (RFC 2046: 70 chars).
MAX_HEADER_BYTES = 16 * 1024
MAX_BOUNDARY_LINE = 200

SOI = b"\xff\xd8"  # JPEG start-of-image marker

_SEEK, _HEADERS, _BODY, _END = "seek", "headers", "body", "end"


def boundary_from_content_type(value: str | None) -> str | None:
    """The ``boundary`` parameter of a Content-Type header, or None.

    ``multipart/x-mixed-replace; boundary=FRAME`` -> ``FRAME``; quoting and any case of
    the parameter name are handled by the stdlib's header parser.
    """
    if not value:
        return None
    msg = Message()
    msg["content-type"] = value
    boundary = msg.get_param("boundary")
    if boundary is None:
        return None
    boundary = collapse_rfc2231_value(boundary).strip()
    return boundary or None


def _token(boundary: str | bytes | None) -> bytes | None:
    """The boundary without leading dashes: what every spelling of its delimiter contains."""
    if boundary is None:
        return None
    if isinstance(boundary, str):
        boundary = boundary.encode("latin-1", "replace")
    token = boundary.strip().lstrip(b"-")
    return token or None


class MjpegSplitter:
    """Incremental multipart splitter: ``feed(chunk)`` returns the parts completed by it.

    Counters: ``parts`` (returned), ``truncated`` (a part cut off by the end of the stream
    or by the next boundary before its headers ended), ``oversized`` (dropped, larger than
    ``max_part_bytes``), ``skipped_bytes`` (preamble and junk between parts),
    ``bytes_in``.
    """

    def __init__(self, boundary: str | bytes | None = None, *, max_part_bytes: int = MAX_PART_BYTES) -> None:
        self.declared_boundary = boundary
        self.max_part_bytes = max_part_bytes
        self.parts = 0
        self.truncated = 0
        self.oversized = 0
        self.skipped_bytes = 0
        self.bytes_in = 0
        self._token = _token(boundary)
        self._delim = b"--" + self._token if self._token else b""
        # The buffer always keeps one byte before ``_pos``, so "is this at the start of a
        # line?" is one look back. It starts with a virtual newline: the stream's first
        # byte is at a line start.
        self._buf = bytearray(b"\n")
        self._pos = 1  # start of the unit being parsed (preamble, headers or body)
        self._scan = 1  # where the next search for a boundary resumes
        self._state = _SEEK
        self._length: int | None = None  # Content-Length of the part being read
        self._synced = False  # a boundary line has been seen

    # -- public --------------------------------------------------------------------------

    @property
    def boundary(self) -> str | None:
        """The boundary in use (declared or found in the body), without leading dashes."""
        return self._token.decode("latin-1") if self._token else None

    @property
    def synced(self) -> bool:
        """True once the first boundary line has been found."""
        return self._synced

    @property
    def ended(self) -> bool:
        """True after the closing ``--boundary--`` line (or ``finish()``): nothing more will come."""
        return self._state is _END

    def counters(self) -> dict[str, int]:
        return {
            "parts": self.parts,
            "truncated": self.truncated,
            "oversized": self.oversized,
            "skipped_bytes": self.skipped_bytes,
            "bytes_in": self.bytes_in,
        }

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes from the stream; return the parts (JPEG bytes) they completed."""
        self.bytes_in += len(chunk)
        if self._state is _END:
            self.skipped_bytes += len(chunk)  # the epilogue after the closing boundary
            return []
        self._buf += chunk
        out: list[bytes] = []
        while self._step(out):
            pass
        self._compact()
        return out

    def finish(self) -> None:
        """The stream has ended: a part in progress is incomplete, so it is discarded and counted."""
        rest = bytes(self._buf[self._pos :]).strip()
        if self._state is _BODY or (self._state is _HEADERS and rest):
            self.truncated += 1
        elif self._state is _SEEK:
            self.skipped_bytes += len(rest)
        self._buf = bytearray(b"\n")
        self._pos = self._scan = 1
        self._state = _END

    # -- states ----------------------------------------------------------------------------

    def _step(self, out: list[bytes]) -> bool:
        """Advance the state machine once; False when more bytes are needed."""
        if self._state is _SEEK:
            return self._seek()
        if self._state is _HEADERS:
            return self._headers()
        if self._state is _BODY:
            return self._body(out)
        return False

    def _seek(self) -> bool:
        """Look for the next boundary line (the first one, or the one after a sized body)."""
        if self._token is None:
            found = self._discover_boundary()
        else:
            # Between parts (or in the preamble) nothing but junk can hold the delimiter,
            # so it need not start a line there.
            found = self._find_delimiter(self._scan, line_start=None)
        if found is None:
            # Nothing before the search point can start a boundary any more: let it go.
            keep_from = max(self._pos, self._scan - 1)
            self.skipped_bytes += len(bytes(self._buf[self._pos : keep_from]).strip())
            self._pos = keep_from
            return False
        start, end, closing = found
        self.skipped_bytes += len(bytes(self._buf[self._pos : start]).strip())
        self._synced = True
        self._enter_headers(end, closing)
        return True

    def _headers(self) -> bool:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 2:
            return False
        if buf[pos : pos + 2] == SOI:  # quirk: the JPEG follows the boundary line, no headers
            self._enter_body(pos, None)
            return True
        length = None
        cursor = pos
        while True:
            nl = buf.find(b"\n", cursor)
            if nl < 0:
                if len(buf) - pos > MAX_HEADER_BYTES:
                    self.truncated += 1  # not headers: resynchronise on the next boundary
                    self._state, self._scan = _SEEK, pos
                    return True
                return False
            line = bytes(buf[cursor:nl]).strip()
            if not line:
                self._enter_body(nl + 1, length)
                return True
            bare = line.lstrip(b"-")
            if self._token is not None and bare in (self._token, self._token + b"--"):
                # A boundary where headers should be: the part was empty or cut off.
                self.truncated += 1
                self._enter_headers(nl + 1, bare != self._token)
                return True
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = None  # unusable: find the end by the next boundary instead
                if length is not None and length < 0:
                    length = None
            cursor = nl + 1

    def _body(self, out: list[bytes]) -> bool:
        buf, start = self._buf, self._pos
        if self._length is not None:
            end = start + self._length
            if len(buf) < end:
                return False
            self._emit(out, self._take(start, end))
            self._pos = self._scan = end
            self._state = _SEEK
            return True
        found = self._find_delimiter(self._scan, line_start=start)
        if found is None:
            if len(buf) - start > self.max_part_bytes:
                self.oversized += 1
                self._pos = self._scan = len(buf)
                self._state = _SEEK
            return False
        line_start, end, closing = found
        # The line break before a boundary belongs to the boundary, not to the JPEG.
        if buf[line_start - 2 : line_start] == b"\r\n" and line_start - 2 >= start:
            line_start -= 2
        elif line_start > start and buf[line_start - 1] == 0x0A:
            line_start -= 1
        self._emit(out, self._take(start, line_start))
        self._enter_headers(end, closing)
        return True

    # -- helpers ---------------------------------------------------------------------------

    def _enter_headers(self, pos: int, closing: bool) -> None:
        self._pos = self._scan = pos
        self._state = _END if closing else _HEADERS
        if closing:
            self.skipped_bytes += len(bytes(self._buf[pos:]).strip())

    def _enter_body(self, pos: int, length: int | None) -> None:
        if length is not None and length > self.max_part_bytes:
            self.oversized += 1
            self._pos = self._scan = pos
            self._state = _SEEK  # skip it by resynchronising on the next boundary
            return
        self._pos = self._scan = pos
        self._length = length
        self._state = _BODY

    def _take(self, start: int, end: int) -> bytes:
        """The buffer's bytes [start:end], copied once, where ``bytes(buf[a:b])`` copies twice (a
        bytearray slice, then bytes) and allocates twice a frame's size. The view is let go at once:
        a bytearray with a view on it cannot grow or shrink."""
        with memoryview(self._buf) as view:
            return bytes(view[start:end])

    def _emit(self, out: list[bytes], part: bytes) -> None:
        if len(part) > self.max_part_bytes:
            self.oversized += 1
            return
        self.parts += 1
        out.append(part)

    def _find_delimiter(self, start: int, *, line_start: int | None) -> tuple[int, int, bool] | None:
        """Find a ``--token`` boundary line at or after ``start``.

        Returns (where the line starts, where the next line starts, is it the closing
        ``--token--``), or None and sets ``_scan`` to where the next search must resume.
        With ``line_start`` given (scanning a body of unknown length) the boundary must
        begin a line or begin right at ``line_start``: inside a JPEG only a line start
        makes it a boundary. Extra leading dashes are accepted.
        """
        buf, delim = self._buf, self._delim
        at = start
        while True:
            p = buf.find(delim, at)
            if p < 0:
                self._scan = max(start, len(buf) - len(delim) - 1)
                return None
            begin = p
            floor = line_start if line_start is not None else 0
            while begin > floor and buf[begin - 1] == 0x2D:  # '-': the ----token quirk
                begin -= 1
            if line_start is not None and begin != line_start and buf[begin - 1] != 0x0A:
                at = p + 1
                continue
            nl = buf.find(b"\n", p + len(delim))
            if nl < 0:
                if len(buf) - p > MAX_BOUNDARY_LINE:
                    at = p + 1
                    continue
                self._scan = p  # resume here once the rest of the line has arrived
                return None
            rest = bytes(buf[p + len(delim) : nl]).strip()
            if rest and rest != b"--":  # e.g. --FRAMEWORK: a different word
                at = p + 1
                continue
            return begin, nl + 1, rest == b"--"

    def _discover_boundary(self) -> tuple[int, int, bool] | None:
        """No boundary declared: the first line that starts with ``--`` declares it."""
        buf = self._buf
        at = self._scan
        while True:
            p = buf.find(b"\n--", at - 1)
            if p < 0:
                self._scan = max(self._pos, len(buf) - 2)
                return None
            begin = p + 1
            nl = buf.find(b"\n", begin)
            if nl < 0:
                if len(buf) - begin > MAX_BOUNDARY_LINE:
                    at = begin + 1
                    continue
                self._scan = begin
                return None
            line = bytes(buf[begin:nl]).strip()
            token = line.lstrip(b"-")
            if 0 < len(token) <= 70 and all(0x21 <= c <= 0x7E for c in token) and not token.endswith(b"--"):
                self._token = token
                self._delim = b"--" + token
                return begin, nl + 1, False
            at = nl + 1

    def _compact(self) -> None:
        # Drop consumed bytes only when they are most of the buffer: each byte is then
        # moved O(1) times overall, however small the chunks are.
        drop = self._pos - 1  # keep one byte for the line-start look back
        if drop > 0 and (drop * 2 >= len(self._buf) or drop > 1 << 20):
            del self._buf[:drop]
            self._pos -= drop
            self._scan = max(self._scan - drop, 1)
