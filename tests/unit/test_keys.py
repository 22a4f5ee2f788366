"""The key folder (`encoders keys init`) and the rule for binding beyond loopback (issue #13)."""

from __future__ import annotations

import logging
import stat

import pytest
import zmq

from encoders.shared import keys
from encoders.shared.runtime import StartupError


def test_init_makes_a_pair_per_role_secrets_private_and_clients_allowed(tmp_path):
    made = keys.init(tmp_path / "k")
    root = tmp_path / "k"
    assert {p.name for p in made} >= {"core.key", "core.key_secret", "worker.key_secret", "viewer.key"}
    for role in ("core", *keys.CLIENT_ROLES):
        secret = root / f"{role}.key_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, role
    # The allow-list holds every client's public key, and not the core's own.
    assert sorted(p.stem for p in (root / "allowed").glob("*.key")) == sorted(keys.CLIENT_ROLES)
    assert not list((root / "allowed").glob("*secret*"))


def test_init_never_replaces_keys(tmp_path):
    keys.init(tmp_path)
    before = (tmp_path / "core.key_secret").read_bytes()
    with pytest.raises(StartupError, match="holds keys already"):
        keys.init(tmp_path)
    assert (tmp_path / "core.key_secret").read_bytes() == before


def test_a_client_holds_its_role_pair_and_the_cores_public_key(tmp_path):
    keys.init(tmp_path)
    worker = keys.client(str(tmp_path), "worker")
    viewer = keys.client(str(tmp_path), "viewer")
    core_public = (tmp_path / "core.key").read_text()
    assert worker is not None and viewer is not None and worker.server is not None
    assert worker.server == viewer.server and worker.server.decode() in core_public
    assert worker.public != viewer.public and worker.secret != viewer.secret
    assert keys.client("", "worker") is None  # no folder: plain sockets


def test_missing_keys_are_a_startup_error_that_says_what_to_run(tmp_path):
    with pytest.raises(StartupError, match="no public key of the core"):
        keys.client(str(tmp_path), "worker")
    keys.init(tmp_path)
    (tmp_path / "worker.key_secret").unlink()
    with pytest.raises(StartupError, match=r"no key pair for worker.*encoders keys init"):
        keys.client(str(tmp_path), "worker")


def test_the_core_refuses_to_start_with_nobody_allowed(tmp_path):
    keys.init(tmp_path)
    for public in (tmp_path / "allowed").glob("*.key"):
        public.unlink()
    ctx = zmq.Context()
    try:
        with pytest.raises(StartupError, match="no allowed keys"):
            keys.CoreKeys(ctx, str(tmp_path))
    finally:
        ctx.term()


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("ipc:///tmp/x", True),
        ("inproc://core", True),
        ("tcp://127.0.0.1:5556", True),
        ("tcp://127.0.0.5:5556", True),
        ("tcp://localhost:5556", True),
        ("tcp://[::1]:5556", True),
        ("tcp://*:5556", False),
        ("tcp://0.0.0.0:5556", False),
        ("tcp://10.0.0.2:5556", False),
        ("tcp://eth0:5556", False),
        ("tcp://[::]:5556", False),
    ],
)
def test_is_loopback(endpoint, loopback):
    assert keys.is_loopback(endpoint) is loopback


def test_binding_beyond_loopback_needs_keys_or_an_insecure_word(caplog):
    exposed = ["tcp://127.0.0.1:5556", "tcp://*:5557,ipc:///tmp/x"]
    with pytest.raises(StartupError, match=r"tcp://\*:5557 can be reached.*ENCODERS_KEYS.*ENCODERS_INSECURE=1"):
        keys.check_binds(exposed, "", insecure=False)
    with caplog.at_level(logging.WARNING):
        keys.check_binds(exposed, "", insecure=True)
    assert "INSECURE: tcp://*:5557" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        keys.check_binds(exposed, "/keys", insecure=False)
        keys.check_binds(["tcp://127.0.0.1:1", "ipc:///tmp/y"], "", insecure=False)
        keys.check_binds(["tcp://nonsense", "nonsense://x"], "", insecure=False)  # the bind says what is wrong
    assert caplog.text == ""
