"""What the ingest may send the core now, and the frames it could not deliver (docs/PROTOCOL.md, "Ingest").

The core numbers frames and decides which worker embeds each; the ingest only delivers what the
camera sends, into its outbox (announced to the core in ``Captured``, outbox.py), and keeps count
of what did not get there:

- Real time (default): every frame goes at once, while the session is joined. A frame read
  while the core is away, or one the session's queue has no room for, is given up and
  counted ``undelivered``: holding it would only make it stale.
- Lossless: a frame goes only against credit (the core's ``Welcome.credit``, then each
  ``Credit``). One frame waits here while there is none; the caller stops reading the camera
  meanwhile (``accepting``), so its feed is not read and TCP holds the camera back.
  Credit belongs to one life of the session: a new Welcome starts it afresh, losing the
  core takes it away.

The core counts undelivered frames as dropped when the next Hello tells it of them. The
next Hello also says how many captures the session that ended sent, and to which life of
the core (``session_sent``, ``core``): those that never arrived (queued in a connection that
died, or sent to a core that crashed) are counted lost, by the core or, after a restart of
the core, by the recorder (docs/PROTOCOL.md, "Counts"). A Hello carries every frame given
up that no Welcome has confirmed yet: Hellos said again to a core
that was away do not lose the count (each one carries it all), and the Welcome that answers
one takes what it carried off the count; frames given up between that Hello and its Welcome
wait for the next Hello.

Frames a video source leaves out on purpose (its sampling: ENCODERS_SAMPLE_FPS, keyframes only)
are given up the same way (``left_out``): the core counts them dropped, from the next Hello or
from ``CaptureEnded``, whose ``dropped`` carries what no Hello has told (``unreported``), so that
published = embedded + dropped + skipped + lost covers every frame the camera sent.

Pure logic, no sockets and no clock: ``stream.py`` sends what ``next()`` gives it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pictures import JpegFrame


@dataclass
class Delivery:
    lossless: bool
    joined: bool = False
    credit: int = 0  # lossless: captures the core will take now
    pending: JpegFrame | None = None  # read, not yet sent
    read: int = 0  # frames taken from the camera reader
    sent: int = 0  # captures handed to the session's socket
    session_sent: int = 0  # of those, in the session's present (or last) life
    core: str = ""  # the life of the core that welcomed that session
    undelivered: int = 0  # frames given up, over the whole run
    left_out: int = 0  # frames the source's sampling left out, over the whole run (reported as dropped)
    _unreported: int = 0  # frames given up that no welcomed Hello has told the core of
    _in_hello: int = 0  # what the last Hello said

    @property
    def accepting(self) -> bool:
        """May the caller take the next frame from the reader? Lossless: not while one waits."""
        return not (self.lossless and self.pending is not None)

    def add(self, frame: JpegFrame) -> None:
        """A frame from the camera, to send when ``next()`` says so."""
        self.read += 1
        if self.pending is not None:  # real time: the one before could not go
            self.give_up()
        self.pending = frame

    def next(self) -> JpegFrame | None:
        """The frame to send now, if any. Real time: a frame that cannot go now is given up."""
        if self.pending is None:
            return None
        if self.joined and (not self.lossless or self.credit > 0):
            return self.pending
        if not self.lossless:
            self.give_up()
        return None

    def delivered(self) -> None:
        """The frame ``next()`` gave is on its way to the core."""
        self.pending = None
        self.sent += 1
        self.session_sent += 1
        if self.lossless:
            self.credit -= 1

    def not_delivered(self) -> None:
        """The socket took no frame (no live connection, or a full queue). Lossless keeps it for later."""
        if not self.lossless:
            self.give_up()

    def unsent(self, n: int) -> None:
        """``n`` captures counted delivered could not be announced after all (the session's socket took no
        Captured, or the outbox gave them up for room): undelivered, as a frame that never left."""
        if n > 0:
            self.sent -= n
            self.session_sent -= n
            self.undelivered += n
            self._unreported += n

    def give_up(self) -> None:
        """The waiting frame will not be delivered (real time, or the end of the stream)."""
        if self.pending is not None:
            self.pending = None
            self.undelivered += 1
            self._unreported += 1

    def source_left_out(self, total: int) -> None:
        """The source has left out ``total`` frames so far (sampling): the new ones are to be reported dropped."""
        if total > self.left_out:
            self._unreported += total - self.left_out
            self.left_out = total

    @property
    def unreported(self) -> int:
        """Frames given up or left out that no welcomed Hello has told the core of (CaptureEnded's ``dropped``)."""
        return self._unreported - self._in_hello

    # -- the session ---------------------------------------------------------------------------

    def hello(self) -> int:
        """The ``undelivered`` a Hello says now."""
        self._in_hello = self._unreported
        return self._in_hello

    def join(self, credit: int, core: str = "") -> None:
        """A Welcome: a new life. Its credit replaces any from before; the Hello's count is told."""
        self.joined = True
        self.session_sent, self.core = 0, core
        self.credit = credit if self.lossless else 0
        self._unreported -= self._in_hello
        self._in_hello = 0

    def lose(self) -> None:
        """The core is gone (silent, or it no longer knows us): no credit until the next Welcome."""
        self.joined = False
        self.credit = 0

    def add_credit(self, n: int) -> None:
        if self.lossless and self.joined:
            self.credit += n
