"""`encoders db serve`: the embedded database, kept up for psql until Ctrl+C."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile

import psycopg
import pytest

from ..conftest import free_port, wait_for
from ..hosts import hosts  # noqa: F401 - the fixture


@pytest.mark.timeout(60)
def test_serves_the_embedded_database_until_ctrl_c(service):
    runs = tempfile.mkdtemp(prefix="encoders-pg-")  # pgserver's user must reach it: not pytest's 0700 tmp
    try:
        server = service("db", "serve", "--runs-dir", runs)
        url = wait_for(
            lambda: (m := re.search(r"psql \"(\S+)\"", server.output())) and m.group(1), 30, "the URL to be printed"
        )
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert server.stop(signal.SIGINT) == 0
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=3)
    finally:
        shutil.rmtree(runs, ignore_errors=True)


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_served_on_tcp_another_host_connects_with_the_password_only(service, hosts):  # noqa: F811
    """--db-listen: a recorder or psql on another machine reaches it over TCP, with the password;
    without it (or with a wrong one) it is refused, from anywhere."""
    client = hosts.add("client")
    runs = tempfile.mkdtemp(prefix="encoders-pg-")
    port = free_port()
    try:
        server = service(
            "db", "serve", "--runs-dir", runs, "--db-listen", f"0.0.0.0:{port}", env={"ENCODERS_DB_PASSWORD": "s3cret"}
        )
        wait_for(lambda: "Ctrl+C stops it" in server.output(), 60, "the server to be up")
        assert "s3cret" not in server.output()  # a password given is not echoed
        here = f"{hosts.net}.1"

        def connect_from_client(password: str) -> subprocess.CompletedProcess:
            url = f"postgresql://postgres:{password}@{here}:{port}/postgres"
            query = "execute('SELECT 41 + 1').fetchone()[0]"
            code = f"import psycopg; print(psycopg.connect({url!r}, connect_timeout=5).{query})"
            return subprocess.run(
                ["ip", "netns", "exec", client.netns, sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=30,
            )

        ok = connect_from_client("s3cret")
        assert ok.returncode == 0 and ok.stdout.strip() == "42", ok.stderr
        wrong = connect_from_client("guess")
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=5)
        assert server.stop(signal.SIGINT) == 0
        assert connect_from_client("s3cret").returncode != 0  # stopped: nothing listens any more
    finally:
        shutil.rmtree(runs, ignore_errors=True)
