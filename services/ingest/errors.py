"""Why a camera could not be read, in words: one line for the log, the core and ``--test``.

Two kinds, because they call for different answers. A ``StreamError`` may pass (a camera
rebooting, a network down): the service reconnects with backoff, ``--test`` exits 1. An
``UnusableStream`` cannot work as configured (a URL that is not one, wrong credentials, a
codec the ingest does not decode, a path with nothing there): ``--test`` exits 2, as a service
that cannot start does, so that a mistake is told apart from a camera that is away.
"""

from __future__ import annotations


class StreamError(Exception):
    """Why the stream could not be read, in words for a log line or the --test output."""


class UnusableStream(StreamError):
    """The stream cannot work as configured: only a change of URL, credentials or settings helps."""


class Stalled(StreamError):
    """The camera stalled: no byte for the read timeout, or bytes but no frame (counted ``stalls``)."""

    @classmethod
    def no_data(cls, read_timeout: float) -> Stalled:
        return cls(f"no data for {read_timeout:g} s (read timeout: the stream stalled)")


REFUSED = "connection refused (is the camera server running on that port?)"
