"""The web viewer in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) opens the page of a real `encoders view --web` process fed by real ZeroMQ
publishers, with a real PostgreSQL + pgvector holding embeddings to search.

Without chromium these tests fail, not skip: a browser test that silently does not run tests
nothing. Install: apt-get install -y chromium chromium-driver (and pip install selenium).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from encoders.services.viewer.web.thumbnails import make_thumbnail
from encoders.shared import zmqio
from encoders.shared.messages import Frame, MetricsRecord, Stats, StreamStart
from encoders.shared.storage.hits import Hit

from ..conftest import endpoint, free_port, wait_for

INSTALL_HINT = (
    "the browser tests need Debian's chromium and chromium-driver (apt-get install -y chromium "
    "chromium-driver) and selenium (pip install selenium, in the test extra)"
)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
QUERY = "a red square on the lawn"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed: {INSTALL_HINT}")
    binary = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    driver_path = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).exists() else None)
    if binary is None or driver_path is None:
        pytest.fail(f"chromium or chromedriver not found: {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium then never tries to download one.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


# -- a database with embeddings to search ----------------------------------------------------------


def colour_jpeg(bgr: tuple[int, int, int]) -> bytes:
    img = np.full((240, 320, 3), bgr, np.uint8)
    ok, jpeg = cv2.imencode(".jpg", img)
    assert ok
    return jpeg.tobytes()


@pytest.fixture(scope="module")
def database(tiny_model):
    """PostgreSQL with one recorded run: 30 frames of which #7 matches QUERY exactly, and a
    snapshot every 5 frames (frame 5's red, the others grey), as the recorder writes them."""
    from encoders.services.recorder.rows import build_row
    from encoders.services.viewer.search import TextSearch
    from encoders.shared.storage.connection import Database
    from encoders.shared.storage.embedded import database as embedded_database

    folder = Path(tempfile.mkdtemp(prefix="encoders-pg-"))
    runs = folder / "runs"
    try:
        with embedded_database("", str(folder)) as url:
            query, label = TextSearch(
                url, tiny_model["ENCODERS_MODEL"], tiny_model["ENCODERS_PRETRAINED"], str(runs)
            ).embed(QUERY)
            db = Database.open(url)
            db.ensure_frames(query.size)
            run_id = db.claim_run("run-a", datetime.now(UTC))
            assert run_id is not None
            db.update_run(run_id, model=label, dim=query.size)
            rng = np.random.default_rng(0)
            rows = []
            (runs / "run-a" / "snapshots").mkdir(parents=True)
            for seq in range(30):
                vector = query if seq == 7 else rng.normal(size=query.size).astype(np.float32)
                snapshot = None
                if seq % 5 == 0:
                    snapshot = f"snapshots/frame_{seq:06d}.jpg"
                    (runs / "run-a" / snapshot).write_bytes(colour_jpeg((0, 0, 255) if seq == 5 else (128, 128, 128)))
                rec = MetricsRecord(
                    stream="cam0",
                    seq=seq,
                    t_capture=1.7e9 + seq,
                    t_encoded=0.0,
                    worker="w",
                    model=label,
                    similarity=0.9,
                    drift=0.1,
                    vector=vector / np.linalg.norm(vector),
                )
                # Frame 7 has its own stored thumbnail (green), as a worker makes one; frame 20 is a
                # scene change (blue) and frame 25 set off a frozen-feed alert, for the timeline.
                thumbnail = {7: colour_jpeg((0, 255, 0)), 20: colour_jpeg((255, 0, 0))}.get(seq)
                if seq == 20:
                    rec = dataclasses.replace(rec, scene_change=True, drift=0.6)
                if seq == 25:
                    rec = dataclasses.replace(rec, events={"frozen": 12.0})
                rows.append(build_row(run_id, rec, snapshot, thumbnail=thumbnail))
            assert sum(db.write_rows(rows).values()) == 30
            db.close()
            yield url, runs
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the viewer and its publishers ---------------------------------------------------------------


def moving_frame(seq: int) -> bytes:
    img = np.zeros((240, 320, 3), np.uint8)
    img[:, :, 0] = np.linspace(40, 200, 320)[None, :]
    x = (seq * 9) % 280
    img[60:180, x : x + 40] = (0, 220, 255)
    ok, jpeg = cv2.imencode(".jpg", img)
    assert ok
    return jpeg.tobytes()


@pytest.fixture
def live_viewer(service, database, tiny_model, publishers):
    """A web viewer fed 15 frames a second (with metrics, scene changes and ingest stats) until the test ends."""
    url, runs = database
    frames, metrics = publishers
    port = free_port()
    viewer = service(
        "view",
        "--frames",
        endpoint(frames),
        "--metrics",
        endpoint(metrics),
        "--web",
        f"127.0.0.1:{port}",
        "--database-url",
        url,
        "--runs-dir",
        str(runs),
        env={**tiny_model, "DISPLAY": ""},
    )
    stop = threading.Event()

    def publish():
        seq = 0
        while not stop.is_set():
            t = time.time()
            drift = 0.05 + 0.04 * np.sin(seq / 5) + (0.3 if seq % 20 == 10 else 0.0)
            zmqio.send(frames, Frame("cam0", seq, t, 320, 240, moving_frame(seq)), topic=True)
            zmqio.send(
                metrics,
                MetricsRecord(
                    "cam0",
                    seq,
                    t,
                    t,
                    "w",
                    "m",
                    1 - drift,
                    drift,
                    fps=14.9,
                    counts={"embedded": seq + 1, "dropped": seq // 10},
                    scene_change=seq % 20 == 10,
                    # A scene change carries the thumbnail a worker made of its frame (192 wide here).
                    thumbnail=(make_thumbnail(moving_frame(seq)) or b"") if seq % 20 == 10 else b"",
                ),
                topic=True,
            )
            if seq % 45 == 40:  # the camera restarts (every 3 s): the chart draws no line across the gap
                zmqio.send(metrics, StreamStart("cam0", first_seq=seq + 1), topic=True)
            if seq % 8 == 0:
                zmqio.send(
                    frames, Stats("ingest", "cam0", {"published": seq + 1, "workers": 2, "fps": 15.0}), topic=True
                )
            seq += 1
            stop.wait(1 / 15)  # paces: 15 frames a second

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    wait_for(lambda: viewer.proc.poll() is not None or "web viewer on" in viewer.output(), 20, "the web server")
    assert viewer.proc.poll() is None, viewer.output()
    yield f"http://127.0.0.1:{port}/", viewer
    stop.set()
    publisher.join(5)


def element_image(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(np.int16)


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


@pytest.mark.browser
def test_the_page_plays_the_video_updates_its_numbers_and_searches(browser, live_viewer):
    from selenium.webdriver.common.by import By

    page, viewer = live_viewer
    browser.get(page)
    browser.get_log("browser")  # only what this page logs counts below
    # The counters show what ingest and metrics published.
    wait_for(lambda: text(browser, "workers") == "2", 20, "the workers counter to show 2")
    first = int(text(browser, "frames-in"))
    assert text(browser, "fps") == "14.9"
    assert int(text(browser, "dropped")) >= 0 and int(text(browser, "embedded")) > 0

    # The video plays: the same element, a moment apart, shows different pictures.
    video = browser.find_element(By.ID, "video")
    wait_for(
        lambda: browser.execute_script("return arguments[0].naturalWidth", video) == 320,
        10,
        "the video to show its first frame",
    )
    before = element_image(video)
    wait_for(lambda: np.abs(before - element_image(video)).mean() > 1.0, 5, "the video to change")

    # The chart is redrawn as points arrive, and the counters count on.
    chart = browser.find_element(By.ID, "chart")
    drawn = browser.execute_script("return arguments[0].toDataURL()", chart)
    wait_for(
        lambda: browser.execute_script("return arguments[0].toDataURL()", chart) != drawn, 5, "the chart to change"
    )
    wait_for(lambda: int(text(browser, "frames-in")) > first, 5, "the frames-in counter to go up")
    # The camera's restart reaches the page as a gap in its drift (a null the chart draws no line across).

    def gaps() -> list:
        with urllib.request.urlopen(f"{page}api/drift", timeout=10) as answer:
            return [p for p in json.load(answer)["cam0"] if p[1] is None]

    wait_for(gaps, 10, "a gap in the drift")
    assert browser.find_element(By.CSS_SELECTOR, "#streams tbody td").text == "cam0"

    # Scene changes arrive with thumbnails that load.
    wait_for(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('#scenes img')].filter(i => i.naturalWidth === 192).length"
        ),
        10,
        "a scene change thumbnail",
    )

    # Search: text in, matching frames with thumbnails out; frame 7 matches exactly and is shown
    # by its own stored thumbnail (green), not its stream's last snapshot before it (frame 5's,
    # red); frames without one are shown by that snapshot, and say so.
    panel = browser.find_element(By.ID, "search-panel")
    wait_for(panel.is_displayed, 5, "the search box (the viewer has a database)")
    browser.find_element(By.ID, "search-text").send_keys(QUERY)
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait_for(
        lambda: browser.execute_script(
            "const i = document.querySelector('#search-results img'); return i && i.complete && i.naturalWidth > 0"
        ),
        60,
        "search results with thumbnails",
    )
    results = browser.find_elements(By.CSS_SELECTOR, "#search-results figure")
    assert len(results) == 12
    assert results[0].text.startswith("run-a cam0 #7") and "snapshot of" not in results[0].text
    assert "similarity 1.000" in results[0].text
    green = element_image(results[0].find_element(By.TAG_NAME, "img")).mean(axis=(0, 1))
    assert green[1] > 180 and green[0] < 60 and green[2] < 60, green
    assert any("(snapshot of #" in r.text for r in results[1:])
    assert "12 frame(s)" in text(browser, "search-note")
    # The API gives a hit in the one shape `encoders search --format json` does, pictures as URLs.
    url, _viewer = live_viewer
    with urllib.request.urlopen(f"{url}api/search?k=3&text={urllib.parse.quote(QUERY)}", timeout=30) as answer:
        hits = json.load(answer)["results"]
    assert [tuple(h) for h in hits] == [Hit.JSON_FIELDS] * 3
    assert (hits[0]["run"], hits[0]["seq"], hits[0]["snapshot_seq"], hits[0]["rank"]) == ("run-a", 7, 5, 1)
    assert hits[0]["snapshot"].startswith("api/thumbnail/") and datetime.fromisoformat(hits[0]["time"])
    assert hits[0]["thumbnail"].startswith("api/thumbnail/") and hits[0]["thumbnail"] != hits[0]["snapshot"]
    with urllib.request.urlopen(f"{url}{hits[0]['thumbnail']}", timeout=10) as answer:
        assert answer.read() == colour_jpeg((0, 255, 0))  # the stored thumbnail, byte for byte

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    assert viewer.stop() == 0
    assert "search for 'a red square on the lawn': 12 result(s)" in viewer.output()


@pytest.mark.browser
def test_the_page_opened_with_its_token_works_and_without_it_is_refused(browser, service):
    port = free_port()
    guarded = service("view", "--web", f"127.0.0.1:{port}", "--web-token", "t0ken", env={"DISPLAY": ""})
    wait_for(lambda: "web viewer on" in guarded.output(), 20, "the guarded web server")
    browser.get(f"http://127.0.0.1:{port}/")
    assert "needs its token" in browser.find_element("tag name", "body").text
    # The refusal is logged as a failed load (which shows this console check sees errors at all);
    # nothing after it may be.
    refused = browser.get_log("browser")
    assert any(e["level"] == "SEVERE" and "401" in e["message"] for e in refused), refused
    browser.get(f"http://127.0.0.1:{port}/?token=t0ken")
    # The page's script, stylesheet, video and event stream all got through: the status says live.
    wait_for(lambda: text(browser, "status").startswith("live"), 10, "the page to go live")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    assert guarded.stop() == 0


def test_the_search_api_answers_as_its_openapi_document_says(live_viewer, tiny_model, tmp_path):
    """Issue #15: /api/search does what `encoders search` does (a sentence, a stored frame, an
    uploaded picture; a run, a stream, a time range; paging; a minimum similarity), and every
    answer, good or bad, is what /api/openapi.json describes."""
    import httpx
    import jsonschema
    from openapi_spec_validator import validate
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    url, _viewer = live_viewer
    api = httpx.Client(base_url=url, timeout=60)
    doc = api.get("api/openapi.json").json()
    validate(doc)  # a valid OpenAPI 3.1 document
    registry = Registry().with_resource("urn:api", Resource.from_contents(doc, default_specification=DRAFT202012))
    assert tuple(doc["components"]["schemas"]["Hit"]["required"]) == Hit.JSON_FIELDS

    def check(resp: httpx.Response, method: str = "get") -> dict:
        spec = doc["paths"]["/api/search"][method]["responses"][str(resp.status_code)]
        schema = spec["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator({"$ref": "urn:api" + schema["$ref"]}, registry=registry).validate(resp.json())
        return resp.json()

    # A sentence: frame 7 first; paging goes on where the first page stopped.
    first = check(api.get("api/search", params={"text": QUERY, "k": 5}))
    assert first["results"][0]["seq"] == 7 and len(first["results"]) == 5
    second = check(api.get("api/search", params={"text": QUERY, "k": 5, "offset": 5}))
    assert [h["rank"] for h in second["results"]] == [6, 7, 8, 9, 10]
    assert not {h["seq"] for h in first["results"]} & {h["seq"] for h in second["results"]}
    # A stored frame: itself first, alike 1.0; a minimum similarity leaves only those that alike.
    same = check(api.get("api/search", params={"frame": "run-a:7", "k": 3}))
    assert same["results"][0]["seq"] == 7 and same["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    strict = check(api.get("api/search", params={"frame": "run-a:cam0:7", "min_similarity": 0.99}))
    assert [h["seq"] for h in strict["results"]] == [7]
    # A scope: another stream has nothing; a time range before the run has nothing.
    assert check(api.get("api/search", params={"text": QUERY, "stream": "cam9"}))["results"] == []
    assert check(api.get("api/search", params={"text": QUERY, "until": "2000-01-01"}))["results"] == []
    # An uploaded picture: a red square, as the query describes; answers in the same shape.
    picture = colour_jpeg((0, 0, 255))
    uploaded = check(api.post("api/search", params={"k": 4}, files={"image": ("q.jpg", picture, "image/jpeg")}), "post")
    assert len(uploaded["results"]) == 4
    # What is wrong is said, with 400, in the shape the document gives errors.
    for bad in ({}, {"text": "x", "frame": "run-a:1"}, {"text": "x", "k": "0"}, {"text": "x", "min_similarity": "2"},
                {"frame": "nope:1"}, {"text": "x", "since": "yesterday-ish"}):  # fmt: skip
        answer = api.get("api/search", params=bad)
        assert answer.status_code == 400, (bad, answer.text)
        assert check(answer)["error"]
    not_a_picture = api.post("api/search", files={"image": ("q.jpg", b"not a picture", "image/jpeg")})
    assert not_a_picture.status_code == 400 and check(not_a_picture, "post")["error"]


@pytest.mark.browser
def test_the_timeline_draws_drift_with_its_scene_changes_and_alerts_and_opens_a_frame(browser, live_viewer):
    """Issue #15: drift over a chosen period (not only the live window), scene changes and alerts
    on it, and a click opens that moment's frame."""
    from selenium.webdriver.common.by import By

    page, _viewer = live_viewer
    browser.get(page)
    panel = browser.find_element(By.ID, "timeline-panel")
    wait_for(panel.is_displayed, 10, "the timeline (the viewer has a database)")
    browser.find_element(By.ID, "timeline-run").send_keys("run-a")
    browser.find_element(By.CSS_SELECTOR, "#timeline-form button").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline-chart polyline"), 20, "the drift line")
    line = browser.find_element(By.CSS_SELECTOR, "#timeline-chart polyline")
    assert len(line.get_attribute("points").split()) == 30  # a point a frame: the period is 30 frames long
    marks = browser.find_elements(By.CSS_SELECTOR, "#timeline-chart .mark")
    assert sorted(m.get_attribute("data-kind") for m in marks) == ["frozen", "scene_change"]
    assert "2 scene change(s) and alert(s)" in text(browser, "timeline-note")
    # A click on the scene change opens its frame's own picture (blue), said by its caption.
    next(m for m in marks if m.get_attribute("data-kind") == "scene_change").click()
    frame = browser.find_element(By.ID, "timeline-frame")
    wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", frame),
             10, "the moment's frame")  # fmt: skip
    assert text(browser, "timeline-caption") == "run-a cam0 #20 scene change"
    blue = element_image(frame).mean(axis=(0, 1))
    assert blue[2] > 180 and blue[0] < 60 and blue[1] < 60, blue
    if shot := os.environ.get("ENCODERS_SCREENSHOT"):  # the README's picture: the page with every view in use
        browser.find_element(By.ID, "search-text").send_keys(QUERY)
        browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#search-results img"), 60, "search results")
        every_picture = "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        wait_for(lambda: browser.execute_script(every_picture), 20, "every picture on the page")
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1400, height + 40)
        browser.execute_script("window.scrollTo(0, 0)")
        # The resize is done when set_window_size returns (WebDriver); two animation frames: painted.
        painted = "const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(done))"
        browser.execute_async_script(painted)
        browser.save_screenshot(shot)
        browser.set_window_size(1400, 1000)
    # A period with nothing in it says so.
    browser.find_element(By.ID, "timeline-until").send_keys("2000-01-01")
    browser.find_element(By.CSS_SELECTOR, "#timeline-form button").click()
    wait_for(lambda: "nothing recorded" in text(browser, "timeline-note"), 10, "the empty period")
