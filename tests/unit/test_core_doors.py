"""The core's doors (services/metrics/doors.py) against a real allow-list folder and a real publisher:
a subscriber's key revoked drops the publisher's subscribers, however the allow-list was read meanwhile."""

from __future__ import annotations

import logging

import zmq

from encoders.services.metrics.doors import KEYS_CHECK_S, Doors
from encoders.shared import keys

from ..conftest import free_port


def test_a_viewer_key_added_and_revoked_between_two_looks_still_drops_the_subscribers(tmp_path, sockets, caplog):
    """The ZAP thread reads allowed/ again at each handshake: the key added, a viewer let in with it, and
    the key revoked, all between two of the core's looks (once a second). Comparing its two looks, the
    core saw no viewer key go, and the subscriber kept its subscription (CI, test_keys: once)."""
    keys.init(tmp_path)
    allowed = keys.AllowList(tmp_path / keys.ALLOWED)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = sockets.bind(zmq.PUB, endpoint)
    doors = Doors(allowed, [(pub, endpoint)])
    assert doors.revoked(10.0, []) == []  # the first look
    keys.add_machine(tmp_path, "viewer", "tv")
    assert allowed.refresh()  # the handshake of the tv's subscription: its key let in
    keys.revoke(tmp_path, "viewer-tv")
    assert allowed.refresh()  # another handshake, later in the same second
    with caplog.at_level(logging.WARNING, "encoders.metrics"):
        assert doors.revoked(10.0 + KEYS_CHECK_S, []) == []
    assert "the key viewer-tv was revoked: the subscribers of" in caplog.text
    # Nothing else changed: the next look drops nobody again.
    caplog.clear()
    assert doors.revoked(10.0 + 2 * KEYS_CHECK_S, []) == [] and "revoked" not in caplog.text


def test_a_worker_key_revoked_drops_no_subscriber(tmp_path, sockets, caplog):
    keys.init(tmp_path)
    allowed = keys.AllowList(tmp_path / keys.ALLOWED)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    doors = Doors(allowed, [(sockets.bind(zmq.PUB, endpoint), endpoint)])
    keys.add_machine(tmp_path, "worker", "gpu1")
    assert doors.revoked(10.0, []) == []
    keys.revoke(tmp_path, "worker-gpu1")
    with caplog.at_level(logging.WARNING, "encoders.metrics"):
        assert doors.revoked(10.0 + KEYS_CHECK_S, []) == []
    assert "subscribers" not in caplog.text
