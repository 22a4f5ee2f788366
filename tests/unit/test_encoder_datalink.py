"""A worker's data socket (services/encoder/datalink.py): pictures in from the ingests the core
named, and nothing from anyone else. With keys it is a CurveZMQ server with the worker's key pair
whose ZAP handler admits only the ingest keys of the core's last ``Workers``: a stranger without
keys, or a key of another role, fails the handshake (counted ``refused_keys``) and gets nothing in."""

from __future__ import annotations

import socket
import time

import pytest
import zmq

from encoders.services.encoder import datalink
from encoders.services.encoder.datalink import DataLink, default_bind
from encoders.shared import keys, messages, zmqio
from encoders.shared.complaints import Complaints
from encoders.shared.keys import CurveKeys
from encoders.shared.messages import Frame, Pictures


def pictures(*seqs: int) -> Pictures:
    return Pictures.of("cam", [Frame("cam", s, float(s), 8, 8, b"\xff\xd8jpeg%d" % s) for s in seqs])


def received(link: DataLink, timeout: float = 2.0, want: int = 1) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(got) < want:
        if link.sock.poll(50):
            got += [f.seq for f in link.receive()]
    return got


def test_without_keys_it_binds_loopback_on_any_port_and_takes_pictures(sockets):
    assert default_bind("") == "tcp://127.0.0.1:*"
    assert default_bind("/keys") == "tcp://*:5560"
    counters: dict[str, int] = {}
    link = DataLink(sockets.ctx, default_bind(""), "", 2**20, None, counters)
    sockets.adopt(link.sock)
    assert link.address.startswith("tcp://127.0.0.1:") and not link.advertised
    ingest = sockets.connect(zmq.DEALER, link.address)
    zmqio.send(ingest, pictures(3, 4))
    zmqio.send(ingest, messages.Heartbeat())  # not a picture: counted, dropped
    assert received(link, want=2) == [3, 4]
    assert counters["pictures"] == 2
    received(link, timeout=0.3)
    assert counters["bad_data_messages"] == 1


def test_an_advertised_address_is_named_as_given(sockets):
    link = DataLink(sockets.ctx, "tcp://127.0.0.1:*", "tcp://gpu1.example:5560", 2**20, None, {})
    sockets.adopt(link.sock)
    assert link.address == "tcp://gpu1.example:5560" and link.advertised


@pytest.fixture
def folder(tmp_path):
    keys.init(tmp_path / "keys")
    return str(tmp_path / "keys")


def curve_client(sockets, folder: str, role: str, server: bytes, address: str) -> zmq.Socket:
    mine = keys.client(folder, role)
    assert mine is not None
    return sockets.connect(zmq.DEALER, address, curve=CurveKeys(mine.public, mine.secret, server))


def keyed_link(
    sockets, folder: str, counters: dict[str, int], bind: str = "tcp://127.0.0.1:*"
) -> tuple[DataLink, CurveKeys]:
    """A worker's data socket with the worker role's keys (its monitor too), adopted by the test; the keys."""
    worker_keys = keys.client(folder, "worker")
    assert worker_keys is not None
    link = DataLink(sockets.ctx, bind, "", 2**20, worker_keys, counters)
    assert link.monitor is not None
    sockets.adopt(link.sock, link.monitor)
    return link, worker_keys


def test_with_keys_only_the_ingest_keys_the_core_named_get_a_picture_in(sockets, folder, caplog):
    counters: dict[str, int] = {}
    link, worker_keys = keyed_link(sockets, folder, counters)
    try:
        ingest = keys.client(folder, "ingest")
        assert ingest is not None
        # Before the core names any ingest key, even the ingest's is refused.
        early = curve_client(sockets, folder, "ingest", worker_keys.public, link.address)
        deadline = time.monotonic() + 5
        while not counters.get("refused_keys") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counters["refused_keys"] >= 1
        early.close(0)
        link.admit({ingest.public.decode(): "ingest cam"})
        # A stranger without keys: no handshake at all (a plain ZMTP peer against a CURVE server).
        stranger = sockets.connect(zmq.DEALER, link.address)
        # A key of another role (a viewer's): allowed by the core for viewing, refused here.
        viewer = curve_client(sockets, folder, "viewer", worker_keys.public, link.address)
        # The right ingest key, but told the wrong server key: its handshake fails on its side.
        viewer_keys = keys.client(folder, "viewer")
        assert viewer_keys is not None
        wrong = curve_client(sockets, folder, "ingest", viewer_keys.public, link.address)
        for sock in (stranger, viewer, wrong):
            try:
                zmqio.send(sock, pictures(66), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # no connection took it: all the better
        assert received(link, timeout=1.5) == []
        good = curve_client(sockets, folder, "ingest", worker_keys.public, link.address)
        zmqio.send(good, pictures(7, 8))
        assert received(link, want=2) == [7, 8]
        assert counters["pictures"] == 2
        assert counters["refused_keys"] >= 2  # the early ingest (before admit) and the viewer
        assert "refused a connection to the data socket" in caplog.text
    finally:
        link.stop_auth()


def refused_soon(link: DataLink, counters: dict[str, int], above: int, timeout: float = 5.0) -> int:
    """``refused_keys`` once it is past ``above`` (the socket's monitor looked at meanwhile), or as it is."""
    deadline = time.monotonic() + timeout
    while counters.get("refused_keys", 0) <= above and time.monotonic() < deadline:
        if link.monitor is not None and link.monitor.poll(50):
            link.watch()
    return counters.get("refused_keys", 0)


def test_with_keys_a_stranger_without_keys_is_counted_refused_though_zap_is_never_asked(
    sockets, folder, caplog, monkeypatch
):
    """A plain ZMTP peer fails the CURVE mechanism check before ZAP is asked: the socket's monitor sees it,
    and it is counted (``refused_keys``) and logged once like a key ZAP refused; a connection that closes
    before any handshake (a port scan) is no key refused."""
    monkeypatch.setattr(datalink, "complain", Complaints(datalink.log, "the worker's counters"))  # logs afresh
    counters: dict[str, int] = {}
    link, _ = keyed_link(sockets, folder, counters)
    try:
        host, port = link.address.removeprefix("tcp://").rsplit(":", 1)
        socket.create_connection((host, int(port))).close()  # no handshake at all
        assert refused_soon(link, counters, 0, timeout=0.5) == 0
        stranger = sockets.connect(zmq.DEALER, link.address)
        try:
            zmqio.send(stranger, pictures(66), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        assert refused_soon(link, counters, 0) >= 1
        assert "refused a connection to the data socket: no CurveZMQ" in caplog.text
        assert received(link, timeout=0.5) == []  # and nothing of it came in
    finally:
        link.close()


def test_with_keys_a_second_worker_on_the_machine_takes_the_next_port_and_says_so(sockets, folder, caplog, monkeypatch):
    """Two workers on one machine with keys and no ENCODERS_DATA_BIND: the port the first holds, the
    second skips (its Hello names the port it got); every port taken is a clear error."""
    from ..conftest import free_port

    base = free_port()
    monkeypatch.setattr(datalink, "DATA_PORT", base)
    monkeypatch.setattr(datalink, "PORTS_TRIED", 2)
    holder = socket.socket()
    holder.bind(("0.0.0.0", base))  # the first worker's port, as another process holds it
    holder.listen()
    try:
        link, worker_keys = keyed_link(sockets, folder, {}, bind="")
        try:
            assert link.address == f"tcp://0.0.0.0:{base + 1}"
            assert (
                f"port {base} is taken (another worker on this machine?): pictures on tcp://*:{base + 1}" in caplog.text
            )
            third = zmq.Context()  # another process's: a context has one ZAP handler
            try:
                with pytest.raises(datalink.StartupError, match=rf"ports {base}-{base + 1} are all taken .*DATA_BIND"):
                    DataLink(third, "", "", 2**20, worker_keys, {})
            finally:
                third.term()
        finally:
            link.stop_auth()
    finally:
        holder.close()
