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


# -- each key bound to its role (issue #22) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("worker", "worker"),  # what `encoders keys init` makes: one per role
        ("ingest", "ingest"),
        ("recorder", "recorder"),
        ("viewer", "viewer"),
        ("control", "control"),
        ("worker-gpu1", "worker"),  # what `encoders keys add` makes: one per machine
        ("ingest-door-cam", "ingest"),
        ("viewer-tv.lounge", "viewer"),
        ("core", None),  # the core's own key serves nobody
        ("workers", None),
        ("worker_gpu1", None),
        ("worker-", None),
        ("gpu1-worker", None),
        ("Worker", None),
        ("", None),
        ("-worker", None),
    ],
)
def test_a_keys_role_is_its_file_name(name, role):
    assert keys.role_of(name) == role


def allow_list(tmp_path):
    keys.init(tmp_path)
    return keys.AllowList(tmp_path / keys.ALLOWED)


def public(path) -> bytes:
    return zmq.auth.load_certificate(path)[0]


def test_the_allow_list_of_an_init_folder_binds_each_key_to_its_role(tmp_path):
    allowed = allow_list(tmp_path)
    assert allowed.names() == sorted(keys.CLIENT_ROLES)
    for role in keys.CLIENT_ROLES:
        entry = allowed.find(public(tmp_path / f"{role}.key"))
        assert entry is not None and entry.roles == {role} and entry.names == (role,)
    assert allowed.find(public(tmp_path / "core.key")) is None


def test_each_door_lets_its_roles_keys_through(tmp_path):
    allowed = allow_list(tmp_path)
    for role in keys.CLIENT_ROLES:
        key = public(tmp_path / f"{role}.key")
        assert allowed.admits(key, "core") is not None
        assert (allowed.admits(key, "frames") is not None) is (role in ("viewer", "recorder"))
        assert (allowed.admits(key, "metrics") is not None) is (role in ("viewer", "recorder"))
        assert allowed.admits(key, "") is None  # a socket with no domain: nobody
    assert allowed.admits(b"x" * 40, "core") is None


def test_a_file_named_for_no_role_is_ignored_with_a_warning_naming_it(tmp_path, caplog):
    keys.init(tmp_path)
    (tmp_path / "allowed" / "gpu1.key").write_bytes((tmp_path / "worker.key").read_bytes())
    (tmp_path / "allowed" / "viewer-broken.key").write_text("not a key")
    with caplog.at_level(logging.WARNING):
        allowed = keys.AllowList(tmp_path / "allowed")
    assert "gpu1.key: its name is neither <role>.key nor <role>-<machine>.key" in caplog.text
    assert "viewer-broken.key: not a public key" in caplog.text
    assert "gpu1" not in allowed.names() and "viewer-broken" not in allowed.names()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (tmp_path / "allowed" / "ingest-new.key").write_bytes((tmp_path / "ingest.key").read_bytes())
        assert allowed.refresh()
    assert caplog.text == ""  # said once, not at every reading


def test_one_key_in_two_files_holds_both_roles(tmp_path):
    allowed = allow_list(tmp_path)
    (tmp_path / "allowed" / "recorder-box.key").write_bytes((tmp_path / "viewer.key").read_bytes())
    assert allowed.refresh()
    entry = allowed.find(public(tmp_path / "viewer.key"))
    assert entry is not None and entry.roles == {"viewer", "recorder"} and entry.name == "recorder-box+viewer"


def test_the_allow_list_is_read_again_only_when_the_folder_changed(tmp_path):
    allowed = allow_list(tmp_path)
    generation = allowed.generation
    assert not allowed.refresh() and allowed.generation == generation
    keys.add_machine(tmp_path, "worker", "gpu1")
    assert allowed.refresh() and allowed.generation == generation + 1
    assert allowed.find(public(tmp_path / "worker-gpu1" / "worker.key")) is not None
    keys.revoke(tmp_path, "worker-gpu1")
    assert allowed.refresh() and allowed.find(public(tmp_path / "worker-gpu1" / "worker.key")) is None
    # A key replaced under the same name (revoke, then add) is a change too, even at once.
    keys.add_machine(tmp_path, "worker", "gpu2")
    assert allowed.refresh()
    old = public(tmp_path / "worker-gpu2" / "worker.key")
    keys.revoke(tmp_path, "worker-gpu2")
    keys.add_machine(tmp_path, "worker", "gpu2", tmp_path / "gpu2-again")
    assert allowed.refresh()
    assert allowed.find(old) is None and allowed.find(public(tmp_path / "gpu2-again" / "worker.key")) is not None


def test_the_user_id_names_the_key_and_carries_it(tmp_path):
    allowed = allow_list(tmp_path)
    key = public(tmp_path / "worker.key")
    user_id = allowed.user_id(key)
    assert user_id.startswith("worker ")
    assert keys.key_of(user_id) == key and keys.name_of(user_id) == "worker"


def test_add_makes_what_one_machine_needs_and_allows_its_key_in_its_role(tmp_path):
    keys.init(tmp_path)
    made = keys.add_machine(tmp_path, "worker", "gpu1")
    assert made == tmp_path / "worker-gpu1"
    assert {p.name for p in made.iterdir()} == {"core.key", "worker.key", "worker.key_secret"}
    assert stat.S_IMODE((made / "worker.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    # That folder is an ENCODERS_KEYS for the machine: the core's public key and its own pair.
    machine = keys.client(str(made), "worker")
    assert machine is not None and machine.server == public(tmp_path / "core.key")
    assert public(tmp_path / "allowed" / "worker-gpu1.key") == machine.public
    assert machine.public != public(tmp_path / "worker.key")
    assert ("worker-gpu1", "worker") in keys.listing(tmp_path)
    elsewhere = keys.add_machine(tmp_path, "viewer", "tv", tmp_path / "for-the-tv")
    assert elsewhere == tmp_path / "for-the-tv" and (elsewhere / "viewer.key_secret").is_file()


@pytest.mark.parametrize(
    ("role", "machine", "error"),
    [
        ("worker", "gpu1", "exists already"),
        ("core", "x", "no role 'core'"),
        ("worker", "../up", "cannot name a machine"),
        ("worker", "", "cannot name a machine"),
        ("worker", "a b", "cannot name a machine"),
    ],
)
def test_add_refuses_what_it_cannot_make(tmp_path, role, machine, error):
    keys.init(tmp_path)
    keys.add_machine(tmp_path, "worker", "gpu1")
    with pytest.raises(StartupError, match=error):
        keys.add_machine(tmp_path, role, machine)


def test_add_needs_a_key_folder(tmp_path):
    with pytest.raises(StartupError, match=r"holds no core\.key"):
        keys.add_machine(tmp_path, "worker", "gpu1")


def test_revoke_removes_the_allowed_file_only(tmp_path):
    keys.init(tmp_path)
    keys.add_machine(tmp_path, "ingest", "door")
    assert keys.revoke(tmp_path, "ingest-door.key") == tmp_path / "allowed" / "ingest-door.key"
    assert not (tmp_path / "allowed" / "ingest-door.key").exists()
    assert (tmp_path / "ingest-door" / "ingest.key_secret").exists()
    with pytest.raises(StartupError, match=r"no key 'ingest-door'.*it holds: control, ingest, recorder"):
        keys.revoke(tmp_path, "ingest-door")
    with pytest.raises(StartupError, match="no key"):
        keys.revoke(tmp_path, "../core")
    assert (tmp_path / "core.key").exists()


def test_listing_says_why_a_file_is_ignored(tmp_path):
    keys.init(tmp_path)
    (tmp_path / "allowed" / "laptop.key").write_bytes((tmp_path / "viewer.key").read_bytes())
    rows = dict(keys.listing(tmp_path))
    assert rows["viewer"] == "viewer" and rows["laptop"].startswith("ignored: its name is neither")


def test_the_core_binds_each_socket_to_its_door(tmp_path):
    keys.init(tmp_path)
    ctx = zmq.Context()
    core = keys.CoreKeys(ctx, str(tmp_path))
    try:
        sock = ctx.socket(zmq.PUB)
        core.door("frames").apply(sock)
        assert sock.zap_domain == b"frames" and sock.curve_server
        sock.close(linger=0)
    finally:
        core.stop()
        ctx.term()


def test_the_core_refuses_to_start_when_every_file_is_ignored(tmp_path):
    keys.init(tmp_path)
    for path in (tmp_path / "allowed").glob("*.key"):
        path.rename(path.with_name(f"old-{path.name}"))
    ctx = zmq.Context()
    try:
        with pytest.raises(StartupError, match="no allowed keys"):
            keys.CoreKeys(ctx, str(tmp_path))
    finally:
        ctx.term()


def test_the_commands_roles_are_the_keys_roles():
    from encoders.commands import keys as key_commands

    assert key_commands.KEY_ROLES == keys.CLIENT_ROLES


def test_keys_commands_add_list_revoke(tmp_path):
    from click.testing import CliRunner

    from encoders.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["keys", "init", str(tmp_path)]).exit_code == 0
    added = runner.invoke(cli, ["keys", "add", str(tmp_path), "--role", "recorder", "--name", "nas"])
    assert added.exit_code == 0 and f"ENCODERS_KEYS={tmp_path / 'recorder-nas'}" in added.output
    listed = runner.invoke(cli, ["keys", "list", str(tmp_path)])
    assert listed.exit_code == 0 and "recorder-nas  recorder" in listed.output
    again = runner.invoke(cli, ["keys", "add", str(tmp_path), "--role", "recorder", "--name", "nas"])
    assert again.exit_code == 1 and "exists already" in again.output
    revoked = runner.invoke(cli, ["keys", "revoke", str(tmp_path), "recorder-nas"])
    assert revoked.exit_code == 0 and "recorder-nas" not in runner.invoke(cli, ["keys", "list", str(tmp_path)]).output
    assert runner.invoke(cli, ["keys", "add", str(tmp_path), "--role", "core", "--name", "x"]).exit_code == 2
