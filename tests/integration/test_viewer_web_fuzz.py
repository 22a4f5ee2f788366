"""The web viewer's routes fed any path and query (issue #13): a real server on the loopback,
a real HTTP client, hypothesis choosing what is asked. Whatever is asked, the answer is a
client error or a real answer, never a server error, and nothing outside the page's own
files is ever served. A few seconds' worth in ``make test``, far more in ``make fuzz``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import encoders.services.viewer
from encoders.services.viewer.feed import WebFeed
from encoders.services.viewer.latest import Latest
from encoders.services.viewer.web import WebApp, WebServer
from encoders.shared.messages import Frame

from ..conftest import free_port


@pytest.fixture(scope="module")
def web():
    board = Latest()
    WebFeed(board).on_message(Frame("cam0", 0, 1.0, 2, 2, b"\xff\xd8\xff\xd9"), 0.0)
    server = WebServer(WebApp(board, token=""), "127.0.0.1", free_port())
    server.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{server.addresses[0][1]}", timeout=10) as client:
        yield client
    server.stop()


STATIC = Path(encoders.services.viewer.__file__).parent / "static"
PAGE_FILES = {p.read_bytes() for p in STATIC.iterdir()}
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "..", "../..", "%00", "\x00", "cam0", "-1", "9" * 5000, "1e309", "nan", "/etc/passwd"]),
)
DIGITS = st.one_of(st.integers(0, 10**30).map(str), st.just("9" * 5000))
PATHS = st.one_of(
    st.builds(lambda s, n: f"/api/scenes/{quote(s, safe='')}/{n}.jpg", TEXT, DIGITS),
    st.builds(lambda n: f"/api/thumbnail/{n}.jpg", DIGITS),
    st.builds(lambda s: f"/static/{quote(s, safe='/.')}", TEXT),
    st.builds(lambda s: f"/{quote(s, safe='/.')}", TEXT),
    st.sampled_from(["/", "/api/state", "/api/drift", "/api/scenes", "/frame.jpg", "/api/search"]),
)
QUERIES = st.dictionaries(st.sampled_from(["stream", "text", "k", "token", "x"]), TEXT, max_size=3)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=PATHS, query=QUERIES)
def test_any_path_and_query_gets_an_answer_and_never_a_server_error(web, path, query):
    resp = web.get(path, params=query)
    assert resp.status_code < 500, (path, query, resp.status_code, resp.text[:200])
    if resp.status_code == 200 and resp.headers.get("content-type", "").startswith(("text/", "application/java")):
        assert resp.content in PAGE_FILES, f"{path} served something that is not one of the page's files"


def test_regressions_found_by_the_fuzzer(web):
    """A seq of 5,000 digits made int() raise inside the handler, and a 5,000-character name under
    /static/ made the static folder's lookup raise (file name too long): 500s both. Now 404s."""
    assert web.get("/api/scenes/cam0/" + "9" * 5000 + ".jpg").status_code == 404
    assert web.get("/static/" + "9" * 5000).status_code == 404
    assert web.get("/static/viewer.js").status_code == 200
