"""The control sessions' side of the core (docs/PROTOCOL.md, "Stopping a pipeline from anywhere"):
``encoders stop`` says Hello as a control session and asks the pipeline to stop; the core drains
(stopping.py) and answers it ``Stopped``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from encoders.shared.messages import Hello, Message, Stop
from encoders.shared.session import Peer

from .roles import Refusal

log = logging.getLogger("encoders.metrics")

# Begin the drain: (now, the reason, the session to answer Stopped once drained).
Stopper = Callable[[float, str, bytes], None]


class Controls:
    takes: tuple[type[Message], ...] = (Stop,)

    def __init__(self, stop: Stopper) -> None:
        self.stop = stop

    def refusal(self, identity: bytes, hello: Hello, now: float) -> Refusal:
        return None

    def join(self, peer: Peer, hello: Hello, now: float) -> Mapping[str, Any]:
        return {}

    def leave(self, peer: Peer, why: str, now: float) -> None:
        pass

    def take(self, peer: Peer, msg: Message, now: float) -> None:
        assert isinstance(msg, Stop)  # the core dispatches only what ``takes`` names
        log.info("control session %s asks the pipeline to stop (%s)", peer.name, msg.reason or "no reason given")
        self.stop(now, f"asked by {peer.name}", peer.identity)

    def tick(self, now: float) -> None:
        pass
