"""Fixtures the integration tests share: real PostgreSQL servers, and a recorder in front of a
stand-in core. Each starts what it needs and stops it again, also when a test fails."""

from __future__ import annotations

import shutil

import pytest
import zmq

from ..fake_core import FakeCore
from .recorder_helpers import HEARTBEAT_S, Postgres, RecorderProcess, pg_home


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """The URL of a real PostgreSQL 16 with pgvector: the embedded server the all-in-one command
    uses, one per test module, on a Unix socket (which every network namespace of tests/hosts.py
    reaches: they share the filesystem)."""
    from encoders.shared.storage.embedded import database

    with database("", str(tmp_path_factory.mktemp("pg"))) as url:
        yield url


@pytest.fixture(scope="module")
def pg():
    """A PostgreSQL server of the tests' own (recorder_helpers.Postgres): a database per test,
    and stopped and started again at will (outages)."""
    home = pg_home()
    server = Postgres(home)
    yield server
    server.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def db_url(pg):
    """A fresh database of ``pg``."""
    return pg.new_database()


@pytest.fixture
def core(sockets):
    """A stand-in core for a recorder to join (tests/fake_core.py), with a frames publisher, on the
    recorder tests' heartbeat (recorder_helpers.HEARTBEAT_S)."""
    fake = FakeCore(
        sockets.bind(zmq.ROUTER), roles={"recorder"}, frames=sockets.bind(zmq.XPUB), heartbeat_s=float(HEARTBEAT_S)
    )
    yield fake
    fake.close()


@pytest.fixture
def start(tmp_path):
    """start(core, url, *args): a recorder process joined to ``core``, killed after the test."""
    started: list[RecorderProcess] = []

    def start_recorder(core, url, *args, **kw):
        p = RecorderProcess(tmp_path, core, url, *args, **kw)
        started.append(p)
        return p

    yield start_recorder
    for p in started:
        p.kill()
