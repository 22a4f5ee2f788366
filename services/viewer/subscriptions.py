"""Where the viewer subscribes: the publishers it was given, or the ones the core names.

Given both --frames and --metrics, the viewer subscribes at once and never speaks to the
core. Otherwise it asks the core at --core (docs/PROTOCOL.md, Viewers): a session says Hello
as a viewer, takes the Welcome's publishers as the core bound them (a wildcard host becomes
the host this viewer reached the core at), says Bye and subscribes. It holds no session
after that, so a slow or paused viewer only skips frames in its own queues and slows nobody;
the pipeline's stop reaches it on the metrics publisher (``Stopped``, topic ``stopped/``).

Until the core answers, the viewer keeps waiting: its window and web page say for whom
(``waiting_lines``, ``status``), and the session's log says so now and then
(shared/session.py). A core that refuses viewers for good (another protocol) is a
StartupError: exit 2, one line.
"""

from __future__ import annotations

import logging

import zmq

from encoders.shared import keys, zmqio
from encoders.shared.endpoints import as_seen_from
from encoders.shared.keys import CurveKeys
from encoders.shared.messages import largest_part
from encoders.shared.runtime import StartupError
from encoders.shared.session import CoreSession, SessionRefused
from encoders.shared.settings import MAX_FRAME_BYTES, CoreConnection, split_addrs

# A few frames of slack: the loop drains every tick, so more would only hold stale frames.
FRAMES_RCVHWM = 8
# Metrics records are small and every one is a point of the plot: keep plenty.
METRICS_RCVHWM = 10_000
# The frames publisher carries frames and the ingests' Stats (the core passes them on); the
# metrics publisher its records, each stream's ends and (re)starts, its own Stats, and the
# pipeline's stop (Stopped: the viewer exits; viewer.py).
FRAME_TOPICS = (b"frame/", b"stats/")
METRICS_TOPICS = (b"metrics/", b"eos/", b"stats/", b"start/", b"stopped/")
CORE_SETTING = "--core / ENCODERS_CORE"

log = logging.getLogger("encoders.viewer")


def open_sockets(
    ctx: zmq.Context,
    frame_addrs: list[str],
    metrics_addr: str,
    curve: CurveKeys | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> tuple[zmq.Socket, zmq.Socket]:
    """The frames and metrics subscriptions; StartupError for an endpoint that does not parse.
    Neither takes a message part larger than a frame's JPEG, a batch's part (a Records' vectors or
    thumbnails) or a header: a publisher that sends one is disconnected."""
    largest = largest_part(max_frame_bytes, batches=True)
    frames = zmqio.open_socket(
        ctx,
        zmq.SUB,
        frame_addrs,
        bind=False,
        rcvhwm=FRAMES_RCVHWM,
        subscribe=FRAME_TOPICS,
        linger=0,
        max_message_bytes=largest,
        curve=curve,
    )
    try:
        metrics = zmqio.open_socket(
            ctx,
            zmq.SUB,
            metrics_addr,
            bind=False,
            rcvhwm=METRICS_RCVHWM,
            subscribe=METRICS_TOPICS,
            linger=0,
            max_message_bytes=largest,
            curve=curve,
        )
    except StartupError:
        frames.close(0)
        raise
    return frames, metrics


def listening_lines(frames: list[str], metrics: str) -> list[str]:
    """The placeholder's lines while the viewer listens to publishers (before their first frame)."""
    return ["waiting for frames from", *(f"  {a}" for a in frames), "and metrics from", f"  {metrics}"]


def core_lines(core: str) -> list[str]:
    """The placeholder's lines while the viewer waits for the core to name its publishers."""
    return ["waiting for the core at", f"  {core}", f"  ({CORE_SETTING})", "to name its publishers"]


class Subscriptions:
    """The viewer's frames and metrics SUB sockets (``sockets``: empty until subscribed).

    ``frames``/``metrics``: the publishers given (empty: the core names them). ``session``:
    the session that asks the core, when one of them is not given; ``step(now)`` drives it
    (the owner calls it every tick and whenever ``poll_sockets`` has something), and
    subscribes once the core has answered.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        frames: list[str],
        metrics: str,
        *,
        session: CoreSession | None = None,
        curve: CurveKeys | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.ctx, self.curve = ctx, curve
        self.max_frame_bytes = max_frame_bytes
        self.frames, self.metrics = frames, metrics
        self.session = session
        self.core = session.endpoint if session is not None else ""
        self.sockets: list[zmq.Socket] = []
        self._started = False
        if session is None:
            self._subscribe(frames, metrics)

    @classmethod
    def from_config(cls, ctx: zmq.Context, cfg: CoreConnection, frames: str, metrics: str) -> Subscriptions:
        """At once on the endpoints given; otherwise by asking the core (StartupError: one does not parse)."""
        frame_addrs = split_addrs(frames)
        curve = keys.client(cfg.keys, "viewer")
        size = cfg.max_frame_bytes
        if frame_addrs and metrics:
            return cls(ctx, frame_addrs, metrics, curve=curve, max_frame_bytes=size)
        session = CoreSession.from_settings(ctx, cfg, "viewer")
        return cls(ctx, frame_addrs, metrics, session=session, curve=curve, max_frame_bytes=size)

    @property
    def subscribed(self) -> bool:
        return bool(self.sockets)

    def poll_sockets(self) -> list[zmq.Socket]:
        """What to wait on: the subscriptions, or the session until the core answers."""
        return self.sockets if self.session is None else [self.session.sock]

    def step(self, now: float) -> None:
        """Hello, heartbeats and the core's answer; subscribe once it has come."""
        session = self.session
        if session is None:
            return
        if not self._started:
            session.start(now)
            self._started = True
        try:
            for msg in session.take(now):
                log.debug("ignored %s from the core: a viewer only asks where the publishers are", msg.KIND)
        except SessionRefused as exc:
            raise StartupError(str(exc)) from None
        if session.welcome is None:
            session.tick(now)
            return
        welcome = session.welcome
        frames = self.frames or [as_seen_from(ep, self.core) for ep in split_addrs(welcome.frames)]
        metrics = self.metrics or (as_seen_from(welcome.metrics, self.core) if welcome.metrics else "")
        session.close(now, "subscribed")  # Bye: a viewer holds no session (docs/PROTOCOL.md)
        self.session = None
        if not frames or not metrics:
            missing = "frames" if not frames else "metrics"
            raise StartupError(
                f"the core at {self.core} named no {missing} publisher in its Welcome: "
                f"give --{missing} (ENCODERS_{missing.upper()})"
            )
        log.info(
            "the core at %s (core %s) publishes frames on %s and metrics on %s",
            self.core,
            welcome.core,
            ", ".join(frames),
            metrics,
        )
        self._subscribe(frames, metrics)

    def waiting_lines(self) -> list[str]:
        """What the window shows before the first frame: whom the viewer waits for."""
        return core_lines(self.core) if self.session is not None else listening_lines(self.frames, self.metrics)

    def status(self) -> str | None:
        """For the web page, while the viewer is not subscribed yet: whom it waits for."""
        if self.session is None:
            return None
        return f"waiting for the core at {self.core} ({CORE_SETTING}) to name its publishers"

    def describe(self) -> str:
        if self.session is not None:
            return f"asking the core at {self.core} ({CORE_SETTING}) where its publishers are"
        return f"waiting for frames from {', '.join(self.frames)} and metrics from {self.metrics}"

    def close(self) -> None:
        """Close every socket (a session still waiting says nothing: it was never welcomed)."""
        if self.session is not None:
            self.session.sock.close(0)
            self.session = None
        for sock in self.sockets:
            sock.close(0)
        self.sockets = []

    def _subscribe(self, frames: list[str], metrics: str) -> None:
        self.frames, self.metrics = frames, metrics
        self.sockets = list(open_sockets(self.ctx, frames, metrics, self.curve, self.max_frame_bytes))
