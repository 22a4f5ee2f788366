"""The one shape every role's side of the core has (docs/PROTOCOL.md, "The core, built by role").

The core keeps the sessions (shared/session.py) and a table of roles: ``roles[peer.role]``.
A Hello is asked of its role's ``refusal`` (which may make room, ending another session),
a welcomed session is its role's to ``join`` (what its Welcome says beyond the core's
own fields), each message of a kind in its role's ``takes`` is its role's to ``take`` (any
other kind is counted ``unexpected_messages`` and dropped by the core), a session's end is its
role's to ``leave`` (give up what it held), and each turn of the loop its role's ``tick``.

A role is handed what it needs when it is made (the numbering, the broker, the streams, a
``send``, an ``end`` or ``evict`` of a session), never the core: ingests.py, workers.py,
recorders.py, viewers.py, controls.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from encoders.shared.messages import Hello, Message
from encoders.shared.session import Peer

# Why a Hello cannot be taken: a reason (the peer exits), (a reason, True) when it may try again, or None.
Refusal = str | tuple[str, bool] | None
# To one session without waiting: False if its connection is gone or full.
Send = Callable[[bytes, Message, float], bool]
# A session's life is over (Bye, silence, a new life, let go): its role gives up what it held.
End = Callable[[Peer, str, float], None]
# Another session is ended to make room (a second ingest of a stream, a recorder's takeover): removed,
# told ``farewell``, and ended with ``why``.
Evict = Callable[[bytes, Message, str, float], None]


class Role(Protocol):
    """One role's side of the core."""

    takes: tuple[type[Message], ...]  # the kinds of message a session of this role sends the core

    def refusal(self, identity: bytes, hello: Hello, now: float) -> Refusal:
        """Why this Hello cannot be taken now, or None; may make room for it (end another session)."""
        ...

    def join(self, peer: Peer, hello: Hello, now: float) -> Mapping[str, Any]:
        """A welcomed session: the fields its Welcome carries beyond the core's own."""
        ...

    def leave(self, peer: Peer, why: str, now: float) -> None:
        """The session's life is over: give up what it held."""
        ...

    def take(self, peer: Peer, msg: Message, now: float) -> None:
        """A message of a kind in ``takes``."""
        ...

    def tick(self, now: float) -> None:
        """What is due, once a turn of the loop."""
        ...
