"""Which streams someone watches, from the frames publisher's subscriptions (an XPUB), and the
``Preview`` each stream's ingest is told (docs/PROTOCOL.md, "Pictures for viewers and snapshots").

Pure logic. ZeroMQ's XPUB hands the core each new subscription (a prefix of topics, ``\\x01``
then the prefix) the first time any subscriber makes it, and its end (``\\x00``) when the last
one leaves; a stream is watched while a prefix of ``frame/STREAM`` is subscribed (``frame/`` or
nothing at all: every stream). ``wanted(streams)`` says, for each stream whose state changed,
the preview rate its ingest is to be told (0: none).
"""

from __future__ import annotations

from collections.abc import Iterable


class Watchers:
    def __init__(self, fps: float) -> None:
        self.fps = fps  # ENCODERS_PREVIEW_FPS
        self.prefixes: dict[bytes, int] = {}  # subscribed prefix -> how many said it (XPUB says once: 1)
        self.told: dict[str, float] = {}  # stream -> the rate its ingest was told

    def subscription(self, message: bytes) -> None:
        """A message the XPUB received: b'\\x01PREFIX' subscribes, b'\\x00PREFIX' unsubscribes."""
        if not message:
            return
        prefix = bytes(message[1:])
        if message[0] == 1:
            self.prefixes[prefix] = self.prefixes.get(prefix, 0) + 1
        elif message[0] == 0 and prefix in self.prefixes:
            self.prefixes[prefix] -= 1
            if self.prefixes[prefix] <= 0:
                del self.prefixes[prefix]

    def watched(self, stream: str) -> bool:
        topic = f"frame/{stream}".encode()
        return any(topic.startswith(prefix) for prefix in self.prefixes)

    def wanted(self, streams: Iterable[str]) -> dict[str, float]:
        """The streams whose preview rate is to change, and to what (0: off)."""
        out = {}
        live = set(streams)
        for stream in live:
            fps = self.fps if self.watched(stream) else 0.0
            if self.told.get(stream, 0.0) != fps:
                out[stream] = fps
                self.told[stream] = fps
        for stream in [s for s in self.told if s not in live]:
            del self.told[stream]
        return out

    def forget(self, stream: str) -> None:
        """Its ingest left: a new one is told afresh."""
        self.told.pop(stream, None)
