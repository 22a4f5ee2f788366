"""A database on another host that goes silent (a pulled cable, a NAT that forgot the flow) is noticed in
seconds: storage.connect sets TCP keepalives and tcp_user_timeout, so the recorder spools instead of hanging.

The database host is a network namespace of its own, joined to this one by a veth pair, where
a small TCP relay hands connections to the embedded PostgreSQL's Unix socket. Going silent is
that host's end of the link going down: packets sent to it are dropped, nothing is refused
or reset, they just vanish, which without those settings leaves a query waiting for many
minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psycopg
import pytest

from encoders.shared.storage.connection import Database, connect
from encoders.shared.storage.embedded import database
from encoders.shared.storage.errors import DatabaseUnavailable

from ..conftest import wait_for

pytestmark = pytest.mark.netns

# Accepts TCP connections on HOST:PORT and relays each, both ways, to the Unix socket PATH.
RELAY = """
import asyncio, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
async def relay(reader, writer):
    upstream_reader, upstream_writer = await asyncio.open_unix_connection(path)
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
async def main():
    server = await asyncio.start_server(relay, host, port)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def db_host() -> Iterator[tuple[str, str]]:
    """A host of its own (network namespace + veth pair): (its namespace, its end of the link)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("this test makes a network namespace: it needs root and iproute2 (ip)")
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"encdb{tag}", f"vh{tag}", f"vn{tag}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", ns)
        ip("addr", "add", "10.231.7.1/30", "dev", here)
        ip("link", "set", here, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", "10.231.7.2/30", "dev", there)
        ip("netns", "exec", ns, "ip", "link", "set", there, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, there
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.fixture
def remote_url(db_host) -> Iterator[str]:
    """The embedded PostgreSQL, reached over TCP at the other host's address."""
    ns, _ = db_host
    home = Path(tempfile.mkdtemp(prefix="encoders-pg-"))  # the server's user must reach it
    try:
        with database("", str(home)) as local:
            socket_dir = parse_qs(urlparse(local).query)["host"][0]
            relay = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    sys.executable,
                    "-c",
                    RELAY,
                    "10.231.7.2",
                    "5432",
                    f"{socket_dir}/.s.PGSQL.5432",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
                yield "postgresql://postgres@10.231.7.2:5432/postgres"
            finally:
                relay.kill()
                relay.wait()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def go_silent(ns: str, link: str) -> None:
    """The host's end of the link goes down: what is sent to it is dropped without a word (no RST, no ICMP)."""
    ip("netns", "exec", ns, "ip", "link", "set", link, "down")


def come_back(ns: str, link: str) -> None:
    ip("netns", "exec", ns, "ip", "link", "set", link, "up")


@pytest.mark.timeout(120)
def test_a_connection_to_a_host_gone_silent_fails_within_seconds(db_host, remote_url):
    ns, link = db_host
    conn = connect(remote_url)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    go_silent(ns, link)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    waited = time.monotonic() - started
    # tcp_user_timeout is 10 s; without it the kernel retransmits for about 15 minutes.
    assert waited < 30, waited
    conn.close()


@pytest.mark.timeout(120)
def test_the_recorders_database_says_unavailable_within_seconds_and_reconnects_later(db_host, remote_url):
    ns, link = db_host
    db = Database(remote_url)
    assert db.migrate()  # over TCP, to the other host
    go_silent(ns, link)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        db.run(lambda conn: conn.execute("SELECT 1"))
    assert time.monotonic() - started < 30
    come_back(ns, link)
    # The link is back: the next call opens a new connection, as the recorder's replay does.
    wait_for(lambda: _answers(db), 30, "the database to answer again")
    db.close()


def _answers(db: Database) -> bool:
    try:
        return db.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
    except DatabaseUnavailable:
        return False
