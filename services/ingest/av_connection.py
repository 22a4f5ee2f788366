"""One connection to a video camera, in a thread of its own: open, read, sample, decode.

PyAV blocks in FFmpeg (connecting, reading) and its timeouts cannot be trusted to end every
block, so each connection gets a thread that the source (av_source.py) can walk away from. It
hands its pictures over a small queue, then one ``Ended`` saying why it stopped, and stamps its
progress (``packet_at``: the last packet read; ``frame_at``: the last frame decoded or left out
on purpose), which the source's watchdog reads. Everything it owns (the container, the socket)
it closes itself, in this thread, whenever it gets out.

Counting, so that every frame the camera sent is accounted for (docs/PROTOCOL.md, "Counts"):
each packet is one frame (``parts``); it is left out by the sampler (``sampled_out``, reported
as dropped), or sent to the decoder. At the connection's end the decoder is flushed; a frame
sent to it that gave no picture (it failed, or lacked the frame it was built on) is ``corrupt``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.error

from encoders.shared.complaints import Complaints

from .av_inputs import Input, describe
from .capture_clock import CaptureClock, Pacer
from .errors import StreamError, UnusableStream
from .pictures import Picture
from .sampling import Sampler

log = logging.getLogger("encoders.ingest")
complain = Complaints(log, "the stream's counters")

QUEUE = 2  # pictures decoded ahead of the reader thread (lossless: then the decoder waits)
PUT_EVERY = 0.1  # seconds between looks at the abandon flag while the queue is full


@dataclass(frozen=True)
class Ended:
    """The connection's last item: why it ended (``error`` None: the stream ended)."""

    error: StreamError | None = None


@dataclass
class Playback:
    """How this connection's frames are timed and chosen (the source's settings)."""

    codecs: frozenset[str]
    paced: bool  # a file at its own rate: frames wait until due
    live_clock: bool  # capture times from the stream's timestamps (else arrival: a file played fast)
    clock: CaptureClock
    pacer: Pacer | None
    sampler: Sampler
    read_timeout: float  # for what a read that timed out says


class Connection:
    def __init__(self, opener: Callable[[], Input], playback: Playback, counters: dict[str, int]) -> None:
        self.opener = opener
        self.playback = playback
        self.counters = counters
        self.queue: queue.Queue[Picture | Ended] = queue.Queue(QUEUE)
        self.abandoned = threading.Event()  # the source has walked away: get out, touch nothing shared
        self.opened = threading.Event()
        self.started = self.packet_at = self.frame_at = time.monotonic()
        self.busy_until = 0.0  # monotonic: waiting on purpose (a file's next frame is not due) until then
        self.input: Input | None = None
        self.description = ""
        self.thread = threading.Thread(target=self._run, name="camera-connection", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def abandon(self) -> None:
        """Walk away: the thread ends at its next chance; a blocked read is unblocked where that is safe."""
        self.abandoned.set()
        inp = self.input
        if inp is not None:
            inp.interrupt()

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        ending = Ended()
        try:
            inp = self.opener()
        except StreamError as exc:
            self._put(Ended(exc))
            return
        except Exception as exc:  # a bug, or an error not yet described: said, not fatal
            log.exception("opening the camera failed")
            self._put(Ended(StreamError(f"cannot open the stream: {type(exc).__name__}")))
            return
        try:
            self.input = inp
            if self.abandoned.is_set():
                return
            if inp.codec not in self.playback.codecs:
                raise UnusableStream(
                    f"unsupported codec {inp.codec!r}: this ingest decodes {', '.join(sorted(self.playback.codecs))} "
                    "(ENCODERS_CODECS)"
                )
            self.description = inp.description
            if self.playback.sampler.keyframes_only:
                inp.decoder.skip_frame = "NONKEY"
            self.packet_at = self.frame_at = time.monotonic()
            self.opened.set()
            self._read(inp)
        except StreamError as exc:
            ending = Ended(exc)
        except (av.error.FFmpegError, OSError) as exc:
            ending = Ended(describe(exc, connect_timeout=0, read_timeout=self.playback.read_timeout, opening=False))
        except Exception as exc:
            log.exception("the camera connection crashed")
            ending = Ended(StreamError(f"the decoder crashed: {type(exc).__name__}"))
        finally:
            inp.close()
        self._put(ending)

    def _read(self, inp: Input) -> None:
        pb, counters = self.playback, self.counters
        self._sent = self._pictures = self._failed = 0  # frames into the decoder, out of it, refused by it
        self._bytes = 0
        flushed = False
        try:
            for packet, arrival in inp.packets():
                if self.abandoned.is_set():
                    return
                self.packet_at = time.monotonic()
                if packet.size == 0:  # the end of the stream: what the decoder holds comes out
                    flushed = True
                    if not self._decode(inp, None, arrival):
                        return
                    continue
                counters["parts"] += 1
                counters["bytes"] += inp.bytes - self._bytes
                self._bytes = inp.bytes
                if not pb.sampler.want_packet(packet.is_keyframe):
                    counters["sampled_out"] = pb.sampler.left_out
                    self.frame_at = self.packet_at
                    continue
                self._sent += 1
                if not self._decode(inp, packet, arrival):
                    return
        finally:
            if not self.abandoned.is_set():
                if not flushed:  # the connection broke: the frames the decoder holds still count
                    self._decode(inp, None, time.time())
                # A frame sent to the decoder that gave no picture, once flushed: it did not decode.
                gap = self._sent - self._pictures - self._failed
                if gap > 0:
                    counters["corrupt"] += gap

    def _decode(self, inp: Input, packet: Any, arrival: float) -> bool:
        """Decode one packet (None: flush) and deliver its pictures; False once abandoned."""
        try:
            frames = inp.decoder.decode(packet)
        except av.error.EOFError:  # flushed already
            return True
        except av.error.FFmpegError as exc:
            self._failed += 1
            self.counters["corrupt"] += 1
            complain("corrupt", "a frame did not decode: %s", exc.strerror)
            return True
        for frame in frames:
            self._pictures += 1
            if not self._deliver(frame, frame.time_base or inp.time_base, arrival):
                return False
        return True

    def _deliver(self, frame: Any, time_base: Fraction | None, arrival: float) -> bool:
        """Time, sample and hand over one decoded frame; False once abandoned."""
        pb, counters = self.playback, self.counters
        counters["decoded"] += 1
        if pb.pacer is not None:
            t = pb.pacer.due(frame.pts, time_base)
        elif pb.live_clock:
            t = pb.clock.capture_time(frame.pts, time_base, arrival)
            counters["clock_resets"] = pb.clock.resets
        else:
            t = arrival
        self.frame_at = time.monotonic()
        # Sampled by the stream's own time: a file played fast has arrival times closer than its frames.
        media = t if pb.live_clock or frame.pts is None or not time_base else float(frame.pts * time_base)
        if not pb.sampler.want_picture(media):
            counters["sampled_out"] = pb.sampler.left_out
            return True
        if pb.pacer is not None:
            self.busy_until = time.monotonic() + max(0.0, t - time.time())
            if pb.pacer.wait(t):
                return False
        return self._put(Picture(frame, frame.width, frame.height, t))

    def _put(self, item: Picture | Ended) -> bool:
        """Hand over, waiting while the reader is behind (lossless backpressure); False once abandoned."""
        while not self.abandoned.is_set():
            try:
                self.queue.put(item, timeout=PUT_EVERY)
            except queue.Full:
                continue
            self.packet_at = self.frame_at = time.monotonic()  # a wait for the reader is no stall
            return True
        return False
