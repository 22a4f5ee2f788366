"""The core's doors with keys on (shared/keys.py): which key each Hello came with, and who may no longer come in.

A key may say Hello only in the role its file in ``allowed/`` is named for. ZAP names the
key of each connection in its User-Id (the file's name and the public key); ``check`` reads
it from the frame a Hello came in. Once a second ``revoked`` reads ``allowed/`` again if it
changed and names the sessions whose key it no longer holds in their role (the core ends
them); if a viewer's or the recorder's key went, every subscriber of the publishers is
dropped (each publisher unbound, and bound again as soon as ZeroMQ frees its port), so that
each connects again through ZAP, which lets only the keys still allowed through.

Without keys every check passes and nothing is watched.
"""

from __future__ import annotations

import logging

import zmq

from encoders.shared.keys import SUBSCRIBERS, Allowed, AllowList, key_of, name_of
from encoders.shared.messages import Hello
from encoders.shared.session import Peer

log = logging.getLogger("encoders.metrics")

KEYS_CHECK_S = 1.0  # how often allowed/ is looked at, and revoked keys' sessions named
REBIND_WARN_S = 5.0  # a publisher unbound to drop a revoked key's subscribers and not bound again: said


class Doors:
    def __init__(self, keys: AllowList | None, publishers: list[tuple[zmq.Socket, str]]) -> None:
        self.keys = keys
        self.publishers = publishers  # (socket, its endpoints as bound, comma-separated)
        self._generation = keys.generation if keys else 0  # of the allow-list, as last checked
        self._checked = 0.0
        # Publishers' endpoints to bind again: (socket, endpoint, unbound since, whether said still unbound).
        self._unbound: list[tuple[zmq.Socket, str, float, bool]] = []

    def check(self, hello: Hello, via: zmq.Frame | None) -> tuple[Allowed | None, str | None]:
        """With keys: the allowed key this Hello came with, and why it may not say it (None if it may)."""
        if self.keys is None:
            return None, None
        try:
            user_id = str(via.get("User-Id")) if via is not None else ""
        except zmq.ZMQError:  # no ZAP answered for this connection
            user_id = ""
        if not user_id:
            return None, "this core serves keys only (ENCODERS_KEYS), and this connection came with none"
        key = self.keys.find(key_of(user_id))
        if key is None:
            return None, f"the key {name_of(user_id)} is no longer allowed here"
        if hello.role not in key.roles:
            return key, (
                f"the key {key.name} is bound to {' and '.join(sorted(key.roles))}, not {hello.role}: a {hello.role} "
                f"needs a key in the core's allowed/ named {hello.role}.key or {hello.role}-<machine>.key"
            )
        return key, None

    def revoked(self, now: float, peers: list[Peer]) -> list[tuple[Peer, Allowed]]:
        """At most once a second, with keys: the sessions (and their keys) that allowed/ no longer holds in
        their role; the publishers' subscribers dropped if a subscriber's key went."""
        if self._unbound:
            self._bind_again(now)
        if self.keys is None or now - self._checked < KEYS_CHECK_S:
            return []
        self._checked = now
        self.keys.refresh()
        if self.keys.generation == self._generation:
            return []
        held = self.keys.keys()
        self._generation = self.keys.generation
        gone = []
        for peer in peers:
            key: Allowed | None = peer.state.get("key")
            still = held.get(key.key) if key is not None else None
            if key is not None and (still is None or peer.role not in still.roles):
                gone.append((peer, key))
        subscribers = set(SUBSCRIBERS)
        # Every key that lost a subscriber's role since the last look, also one added and revoked in
        # between (its subscribers let in by ZAP meanwhile): AllowList.take_changed.
        lost = [
            old.name
            for k, old in self.keys.take_changed().items()
            if old.roles & (subscribers - (held[k].roles if k in held else frozenset()))
        ]
        if lost:
            self._drop_subscribers(f"the key {', '.join(lost)} was revoked", now)
        return gone

    def _drop_subscribers(self, why: str, now: float) -> None:
        """Each publisher unbound (every subscriber's connection closes with it) and bound again as soon as
        the port is free (``_bind_again``): each subscriber connects again (ZeroMQ does, by itself) through
        ZAP, which lets only the keys still allowed through."""
        for sock, endpoints in self.publishers:
            for endpoint in filter(None, endpoints.split(",")):
                for bound in dict.fromkeys((endpoint, endpoint.replace("://*:", "://0.0.0.0:", 1))):
                    try:
                        sock.unbind(bound)
                    except zmq.ZMQError:
                        continue
                    log.warning("%s: the subscribers of %s are dropped; the others connect again", why, endpoint)
                    self._unbound.append((sock, endpoint, now, False))
                    break
                else:
                    log.warning(
                        "%s: could not drop the subscribers of %s (not an address it can bind again): they keep "
                        "their connections until the core restarts",
                        why,
                        endpoint,
                    )
        self._bind_again(now)

    def _bind_again(self, now: float) -> None:
        """Bind the publishers' endpoints that ``_drop_subscribers`` unbound (ZeroMQ frees a port in
        the background: a moment later), said once if one is still not bound after REBIND_WARN_S."""
        waiting = []
        for sock, endpoint, since, said in self._unbound:
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE:
                    log.error("could not bind %s again (its subscribers were dropped): %s", endpoint, exc)
                    continue
                say = not said and now - since >= REBIND_WARN_S
                if say:
                    log.error("%s is still not bound again after %g s: %s; trying on", endpoint, REBIND_WARN_S, exc)
                waiting.append((sock, endpoint, since, said or say))
            else:
                if said:
                    log.info("%s is bound again", endpoint)
        self._unbound = waiting
