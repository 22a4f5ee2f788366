"""`encoders db serve`: the embedded database, kept up for psql until Ctrl+C."""

from __future__ import annotations

import re
import shutil
import signal
import tempfile

import psycopg
import pytest

from ..conftest import wait_for


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
