"""The viewers' side of the core (docs/PROTOCOL.md, "Viewers"): a viewer's session only says where
the publishers are (its Welcome names them); it sends the core nothing but its heartbeats, and
everything it reads comes on the frames and metrics publishers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from encoders.shared.messages import Hello, Message
from encoders.shared.session import Peer

from .roles import Refusal


class Viewers:
    takes: tuple[type[Message], ...] = ()

    def __init__(self, publishers: tuple[str, str]) -> None:
        """``publishers``: (frames, metrics) as bound, which a viewer's Welcome names."""
        self.publishers = publishers

    def refusal(self, identity: bytes, hello: Hello, now: float) -> Refusal:
        return None

    def join(self, peer: Peer, hello: Hello, now: float) -> Mapping[str, Any]:
        frames, metrics = self.publishers
        return {"frames": frames, "metrics": metrics}

    def leave(self, peer: Peer, why: str, now: float) -> None:
        pass

    def take(self, peer: Peer, msg: Message, now: float) -> None:
        raise AssertionError(f"a viewer takes no {msg.KIND}")  # the core dispatches only what ``takes`` names

    def tick(self, now: float) -> None:
        pass
