"""What the ingest's main thread reads a camera through: a feed, polled with the core's socket.

Two kinds: an MJPEG camera is read in the main thread itself (http_source.py: its socket is
polled, each read's frames taken); a video camera is decoded in a thread, whose frames come over
a pipe (reader.py: the pipe's end is polled). Either way the main thread asks the same things
each turn, so that stream.py does not tell them apart:

    start()            begin (connect, or start the thread)
    poll_on()          what to poll for input now (a socket), or None
    wait_s(now)        by when the feed needs a turn though nothing came (frames waiting, a timer)
    fill(now, ready)   the feed's turn: its timers, and one read if what it polls was readable
    take()             the next event read (a frame, or the end), or None
    watch(now, on)     the main thread takes frames again (on), or holds the camera back
    interrupt()        let go of the camera now; close() after
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

import zmq

from encoders.shared import zmqio

from .reader import ReaderEnded, ReaderEvent

POLL_MS = 100  # the longest a wait in ``drive`` lasts before the feed is asked again


class Feed(Protocol):
    def start(self) -> None: ...

    def poll_on(self) -> Any: ...

    def wait_s(self, now: float) -> float | None: ...

    def fill(self, now: float, readable: bool) -> None: ...

    def take(self) -> ReaderEvent | None: ...

    def watch(self, now: float, on: bool) -> None: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


def drive(feed: Feed) -> Iterator[ReaderEvent]:
    """Every event of a feed, waiting for each, until its end (``--test``, tests, benchmarks; the
    ingest polls its feed together with the core's socket instead). Starts the feed."""
    feed.start()
    feed.watch(time.monotonic(), True)
    poller = zmq.Poller()
    polled = None  # what is registered with the poller
    while True:
        event = feed.take()
        if event is not None:
            yield event
            if isinstance(event, ReaderEnded):
                return
            continue
        item, wait = feed.poll_on(), feed.wait_s(time.monotonic())
        if item is None and wait is None:
            return  # nothing more will come (interrupted)
        timeout = POLL_MS if wait is None else min(POLL_MS, zmqio.poll_ms(wait))
        if item is not polled:
            if polled is not None:
                poller.unregister(polled)
            if item is not None:
                poller.register(item, zmq.POLLIN)
            polled = item
        readable = False
        if item is not None:
            readable = bool(poller.poll(timeout))
        elif timeout:
            time.sleep(timeout / 1000)  # a timer of the feed's (a reconnection's wait): nothing to poll
        feed.fill(time.monotonic(), readable)
