"""The web viewer's pure parts: its settings, the latest-value board, scene changes, the
snapshot the page shows, the clients' accounting, search thumbnails' ids, and the wire formats
(MJPEG parts, Server-Sent Events). No sockets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from typing import cast

import cv2
import numpy as np
import pytest

from encoders.services.viewer.config import ViewerConfig
from encoders.services.viewer.feed import SCENES, STATE, VIDEO, WebFeed, raw_key
from encoders.services.viewer.latest import Latest
from encoders.services.viewer.scenes import SceneChanges
from encoders.services.viewer.snapshot import drift_since, finite, snapshot, totals
from encoders.services.viewer.state import ViewerState
from encoders.services.viewer.web.clients import Clients
from encoders.services.viewer.web.formats import MJPEG_START, json_dumps, mjpeg_part, sse_event
from encoders.services.viewer.web.thumbnails import Thumbnails, make_thumbnail
from encoders.shared.messages import EndOfStream, Frame, FrameCounts, MetricsRecord, Stats
from encoders.shared.settings import SettingsError


def jpeg_of(value: int, w: int = 320, h: int = 240) -> bytes:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 1] = value
    img[: h // 2, : w // 2, 2] = 255 - value  # not uniform, so a thumbnail has something to keep
    ok, out = cv2.imencode(".jpg", img)
    assert ok
    return out.tobytes()


def decode(jpeg: bytes | None) -> np.ndarray:
    assert jpeg is not None
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a JPEG"
    return img


def frame(seq: int, stream: str = "cam0", jpeg: bytes = b"j") -> Frame:
    return Frame(stream=stream, seq=seq, t_capture=1000.0 + seq, width=320, height=240, jpeg=jpeg)


def record(
    seq: int,
    drift: float | None = 0.02,
    stream: str = "cam0",
    scene: bool = False,
    t_metrics=None,
    thumbnail: bytes = b"",
    **counts,
) -> MetricsRecord:
    rec = MetricsRecord(
        stream=stream,
        seq=seq,
        t_capture=1000.0 + seq,
        t_encoded=0.0,
        worker="w",
        model="m",
        similarity=None if drift is None else 1 - drift,
        drift=drift,
        fps=12.5,
        counts=cast(FrameCounts, counts or {"embedded": seq + 1, "dropped": 0}),
        scene_change=scene,
        thumbnail=thumbnail,
    )
    if t_metrics is not None:
        rec.t_metrics = t_metrics
    return rec


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "web, address",
    [
        ("8080", ("127.0.0.1", 8080)),
        (":8080", ("127.0.0.1", 8080)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9000", ("::1", 9000)),
    ],
)
def test_web_address_forms_on_this_machine_need_no_token(web, address):
    assert ViewerConfig(web=web).web_address() == address


@pytest.mark.parametrize("web", ["0.0.0.0:8080", "192.168.1.5:8080", "viewer.example:8080", "[::]:8080"])
def test_listening_beyond_this_machine_needs_a_token(web):
    with pytest.raises(SettingsError, match="set a token too"):
        ViewerConfig(web=web)
    assert ViewerConfig(web=web, web_token="s3cret").web_address()[1] == 8080


@pytest.mark.parametrize("web", ["host:port", "8080x", "127.0.0.1:70000", "::1:8080", "127.0.0.1:"])
def test_a_malformed_address_is_refused_with_the_forms_that_work(web):
    with pytest.raises(SettingsError, match="HOST:PORT"):
        ViewerConfig(web=web, web_token="t")


def test_the_token_and_database_password_never_reach_the_logs():
    cfg = ViewerConfig(web="0.0.0.0:8080", web_token="s3cret", database_url="postgresql://u:pw@db/x")
    text = json.dumps(cfg.describe()) + "\n".join(cfg.log_lines())
    assert "s3cret" not in text and "pw@" not in text
    assert cfg.describe()["web_token"] == "***"
    assert ViewerConfig().describe()["web_token"] == ""
    # Every field is also a variable, for docker compose.
    env = ViewerConfig.from_env(
        {"ENCODERS_WEB": "0.0.0.0:1", "ENCODERS_WEB_TOKEN": "t", "ENCODERS_DATABASE_URL": "postgresql:///x"}
    )
    assert (env.web, env.web_token, env.database_url) == ("0.0.0.0:1", "t", "postgresql:///x")


# -- the board -----------------------------------------------------------------------------------


def test_the_board_keeps_only_the_newest_value_and_counts_versions():
    board = Latest()
    assert board.get("k") == (0, None)
    assert board.put("k", "a") == 1
    assert board.put("k", "b") == 2
    assert board.get("k") == (2, "b")
    assert board.get("other") == (0, None)


def test_readers_wait_for_a_newer_value_put_from_another_thread():
    async def scenario():
        board = Latest()
        board.attach(asyncio.get_running_loop())
        board.put("k", "old")
        assert await board.newer("k", 0, timeout=1) == (1, "old")  # already newer: at once
        started = time.monotonic()
        assert await board.newer("k", 1, timeout=0.2) is None  # nothing newer: times out
        assert 0.15 < time.monotonic() - started < 1.0
        threading.Timer(0.1, board.put, ("k", "new")).start()
        with board.follow("k"):
            assert board.readers("k") == 1
            assert await board.newer("k", 1, timeout=5) == (2, "new")
        assert board.readers("k") == 0
        # Many puts while a reader is busy: it gets the newest, once.
        for i in range(100):
            board.put("k", i)
        assert await board.newer("k", 2, timeout=1) == (102, 99)
        waiter = asyncio.ensure_future(board.newer("k", 102, timeout=30))
        await asyncio.sleep(0)  # the waiter runs until it waits for a newer value
        assert not waiter.done()
        board.close()
        assert await asyncio.wait_for(waiter, 2) is None  # closing releases every reader

    asyncio.run(scenario())


# -- scene changes -------------------------------------------------------------------------------


def test_a_scene_change_shows_the_thumbnail_its_record_carries():
    scenes = SceneChanges(keep=2)
    thumbs = {seq: make_thumbnail(jpeg_of(40 * seq)) for seq in range(6)}
    assert scenes.on_record(record(1, thumbnail=thumbs[1] or b"")) is None  # not a scene change
    change = scenes.on_record(record(3, drift=0.4, scene=True, thumbnail=thumbs[3] or b""))
    assert change is not None
    assert (change.stream, change.seq, change.drift) == ("cam0", 3, 0.4)
    assert change.thumbnail == thumbs[3]  # the worker's, as it came: the viewer keeps no frames for it
    scenes.on_record(record(4, scene=True, thumbnail=thumbs[4] or b""))
    scenes.on_record(record(5, scene=True, thumbnail=thumbs[5] or b""))
    assert [s.seq for s in scenes.recent()] == [5, 4]  # newest first, at most `keep`
    # A record without a thumbnail (the worker makes none), or with one that is no JPEG, still
    # counts, without a picture: the page never serves what does not decode.
    for seq, thumbnail in ((8, b""), (9, b"<script>not a jpeg</script>"), (10, b"\xff\xd8 not really")):
        missing = scenes.on_record(record(seq, scene=True, thumbnail=thumbnail))
        assert missing is not None and missing.thumbnail is None
    assert scenes.counters == {"scene_changes": 6, "alerts": 0, "scene_thumbnails_missing": 3}
    # An alert (issue #15) is listed the same way, with what it was.
    frozen = record(11, thumbnail=thumbs[1] or b"")
    frozen.events = {"frozen": 61.0}
    alert = scenes.on_record(frozen)
    assert alert is not None and alert.kinds == ("frozen",) and scenes.counters["alerts"] == 1
    assert scenes.recent()[0].kinds == ("frozen",) and scenes.recent()[1].kinds == ("scene_change",)


def test_a_thumbnail_of_something_that_is_not_a_jpeg_is_none():
    assert make_thumbnail(b"not a jpeg") is None
    small = decode(make_thumbnail(jpeg_of(10, 96, 64)))
    assert small.shape == (128, 192, 3)


# -- the snapshot --------------------------------------------------------------------------------


def test_snapshot_counts_and_values_come_from_ingest_and_metrics():
    state = ViewerState(history=50)
    for seq in range(3):
        state.add(frame(seq))
    state.add(frame(0, "cam1"))
    state.add(record(2, drift=0.25, embedded=3, dropped=1))
    state.add(Stats("ingest", "cam0", {"published": 40, "workers": 3, "fps": 14.9, "dropped": 1}))
    state.add(Stats("ingest", "cam1", {"published": 7, "workers": 3, "fps": 5.0}))
    snap = snapshot(state, now=10.0, counters={"frames_shown": 2})
    cam0, cam1 = snap["streams"]
    assert cam0["stream"] == "cam0" and cam0["frames_in"] == 40 and cam0["embedded"] == 3
    assert cam0["drift"] == 0.25 and cam0["similarity"] == pytest.approx(0.75) and cam0["fps_in"] == 14.9
    assert cam1["embedded"] is None and cam1["drift"] is None
    # Every worker serves every camera: 3 workers, not 6.
    assert snap["totals"] == {"streams": 2, "frames_in": 47, "embedded": 3, "dropped": 1, "workers": 3, "fps": 12.5}
    assert snap["viewer"]["frames_received"] == 4 and snap["viewer"]["frames_shown"] == 2
    assert snap["drift"] == {"cam0": {"added": 1, "points": [[1002.0, 0.25]]}}
    json.dumps(snap, allow_nan=False)  # plain JSON all through


def test_before_ingest_stats_frames_in_counts_what_reached_the_viewer_and_nan_is_null():
    state = ViewerState()
    state.add(frame(0))
    state.add(frame(1))
    state.add(record(1, drift=float("nan")))
    cam0 = snapshot(state, 0.0, {})["streams"][0]
    assert cam0["frames_in"] == 2
    assert cam0["drift"] is None and cam0["similarity"] is None
    assert finite(float("inf")) is None and finite("x") is None and finite(True) is None and finite(2) == 2.0
    assert totals([]) == {
        "streams": 0,
        "frames_in": None,
        "embedded": None,
        "dropped": None,
        "workers": None,
        "fps": None,
    }


def test_what_only_the_core_counts_comes_from_its_stats_when_the_ingests_do_not_carry_it():
    state = ViewerState()
    state.add(frame(0))
    state.add(Stats("metrics", "cam0", {"embedded": 1, "workers": 2, "workers_free": 5, "published": 9}))
    cam0 = snapshot(state, 0.0, {})["streams"][0]
    assert (cam0["workers"], cam0["workers_free"], cam0["frames_in"]) == (2, 5, 9)
    state.add(Stats("ingest", "cam0", {"published": 12, "workers": 3, "fps": 15.0}))
    cam0 = snapshot(state, 0.0, {})["streams"][0]
    assert (cam0["workers"], cam0["workers_free"], cam0["frames_in"], cam0["fps_in"]) == (3, 5, 12, 15.0)


def test_the_snapshot_says_whom_the_viewer_waits_for():
    assert snapshot(ViewerState(), 0.0, {})["waiting"] is None
    assert snapshot(ViewerState(), 0.0, {}, "waiting for the core at x")["waiting"] == "waiting for the core at x"


def test_metrics_stats_newer_than_the_last_record_update_the_counts():
    state = ViewerState()
    state.add(record(5, embedded=6, dropped=0, t_metrics=100.0))
    state.add(Stats("metrics", "cam0", {"embedded": 6, "dropped": 9, "lost": 1}, t=101.0))
    assert snapshot(state, 0.0, {})["streams"][0]["dropped"] == 9
    state.add(record(6, embedded=7, dropped=10, t_metrics=102.0))
    assert snapshot(state, 0.0, {})["streams"][0]["embedded"] == 7


def test_each_client_gets_the_drift_points_it_has_not_had():
    state = ViewerState(history=4)
    sent: dict[str, int] = {}
    state.add(record(1, 0.1))
    state.add(record(2, 0.2))
    first = drift_since(snapshot(state, 0, {})["drift"], sent)
    assert first == {"cam0": {"reset": True, "points": [[1001.0, 0.1], [1002.0, 0.2]]}}
    assert drift_since(snapshot(state, 0, {})["drift"], sent) == {}  # nothing new
    state.add(record(3, 0.3))
    assert drift_since(snapshot(state, 0, {})["drift"], sent) == {"cam0": {"reset": False, "points": [[1003.0, 0.3]]}}
    for seq in range(4, 10):  # more than the window while this client was away
        state.add(record(seq, 0.01 * seq))
    behind = drift_since(snapshot(state, 0, {})["drift"], sent)["cam0"]
    assert behind["reset"] and [p[0] for p in behind["points"]] == [1006.0, 1007.0, 1008.0, 1009.0]


# -- the feed the main loop keeps ----------------------------------------------------------------


def test_the_feed_puts_raw_frames_scenes_and_state_and_renders_video_only_when_watched():
    board = Latest()
    feed = WebFeed(board)
    state = ViewerState()
    jpeg = jpeg_of(99)
    for msg in (frame(0, jpeg=jpeg), record(0, scene=True, thumbnail=make_thumbnail(jpeg) or b"")):
        state.add(msg)
        feed.on_message(msg, 4.0)
    assert board.get(raw_key("cam0")) == (1, jpeg)
    assert [(s.seq, s.thumbnail is not None) for s in board.get(SCENES)[1]] == [(0, True)]
    assert not feed.wants_video()  # nobody watches
    with board.follow(VIDEO):
        assert feed.wants_video()
        feed.put_video(np.zeros((48, 64, 3), np.uint8))
        assert board.get(VIDEO)[0] == 1
        assert not feed.wants_video()  # nothing changed since
        feed.on_message(frame(1), 4.5)
        assert feed.wants_video()
    assert feed.put_state(state, now=5.0, counters={})
    assert not feed.put_state(state, now=5.1, counters={})  # a few a second, not every tick
    assert feed.put_state(state, now=5.3, counters={})
    assert board.get(STATE)[1]["viewer"]["scene_changes"] == 1
    assert feed.put_state(state, now=6.0, counters={}, waiting="waiting for the core")
    assert board.get(STATE)[1]["waiting"] == "waiting for the core"


# -- wire formats --------------------------------------------------------------------------------


def test_mjpeg_parts_and_events_are_what_browsers_parse():
    # Each frame is followed by the next part's boundary and headers, so a browser shows it at once.
    part = mjpeg_part(b"\xff\xd8abc\xff\xd9")
    assert part == b"\xff\xd8abc\xff\xd9\r\n--frame\r\nContent-Type: image/jpeg\r\n\r\n"
    assert MJPEG_START == b"--frame\r\nContent-Type: image/jpeg\r\n\r\n"
    event = sse_event("state", {"a": [1, None]})
    assert event == b'event: state\ndata: {"a":[1,null]}\n\n'
    with pytest.raises(ValueError):
        sse_event("state", {"drift": float("nan")})
    assert json_dumps({"a": [1, None]}) == '{"a": [1, null]}'
    with pytest.raises(ValueError):
        json_dumps({"drift": float("inf")})


# -- web clients ---------------------------------------------------------------------------------


class Transport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_clients_count_what_each_was_sent_and_skipped_while_open_and_once_gone():
    board = Latest()
    clients = Clients(board)
    video = clients.add("video", "cam0", raw_key("cam0"), "10.0.0.2", Transport())
    events = clients.add("events", "events", STATE, "10.0.0.3", Transport())
    for version in range(1, 4):
        board.put(raw_key("cam0"), b"jpeg%d" % version)
    video.take(1)
    video.take(3)  # 2 was replaced before this client could take it
    board.put(raw_key("cam0"), b"jpeg4")
    board.put(raw_key("cam0"), b"jpeg5")  # while it is still busy with 3: 4 is skipped already, 5 is next
    board.put(STATE, {})
    events.take(1)
    assert (video.sent, video.skipped, video.skipped_now(board)) == (2, 1, 2)
    assert clients.counters() == {
        "clients_now": 2,
        "served": 0,
        "frames_sent": 2,
        "frames_skipped": 2,
        "events_sent": 1,
        "events_skipped": 0,
    }
    view = clients.view()["clients"]
    assert [(c["id"], c["kind"], c["what"], c["peer"], c["sent"], c["skipped"]) for c in view] == [
        (1, "video", "cam0", "10.0.0.2", 2, 2),
        (2, "events", "events", "10.0.0.3", 1, 0),
    ]
    clients.remove(video)
    board.put(raw_key("cam0"), b"jpeg6")  # a client that has gone skips nothing more
    assert clients.counters() == {
        "clients_now": 1,
        "served": 1,
        "frames_sent": 2,
        "frames_skipped": 2,
        "events_sent": 1,
        "events_skipped": 0,
    }
    # Stopping the server cuts every open connection, at once.
    transport = events.transport
    clients.cut_off()
    assert transport.aborted and not video.transport.aborted


# -- search thumbnails ---------------------------------------------------------------------------


def test_search_thumbnails_have_opaque_ids_and_only_the_newest_are_kept(tmp_path):
    thumbnails = Thumbnails(keep=2)
    a, b, c = (tmp_path / f"{name}.jpg" for name in "abc")
    a.write_bytes(jpeg_of(10))
    b.write_bytes(b"not a jpeg")
    id_a, id_b = thumbnails.add(a), thumbnails.add(b)
    assert id_a.isdigit() and id_b.isdigit() and id_a != id_b  # a URL never names a path
    assert thumbnails.add(a) == id_a  # the same file, the same id (now the newest)
    thumb_a = thumbnails.get(id_a)
    assert thumb_a is not None and thumb_a.jpeg is None  # made when first asked for
    assert decode(thumb_a.make()).shape == (144, 192, 3)
    thumb_b = thumbnails.get(id_b)
    assert thumb_b is not None and thumb_b.make() is None  # does not decode
    id_c = thumbnails.add(c)
    assert thumbnails.get(id_b) is None  # the oldest went: its URL answers 404
    thumb_c = thumbnails.get(id_c)
    assert thumb_c is not None and thumb_c.make() is None  # no such file
    assert thumbnails.get(id_a) is thumb_a
    assert thumbnails.add(b) not in (id_a, id_b, id_c)  # back again: a new id


def test_a_stream_without_records_for_stream_down_after_is_listed_down_once_until_it_is_back():
    """Issue #15: the page lists a stream down (the recorder tells MQTT, the core marks its return)."""
    board = Latest()
    feed = WebFeed(board, down_after=0.2)
    state = ViewerState()
    feed.on_message(record(4), 1.0)
    feed.put_state(state, now=1.1, counters={}, force=True)
    assert not board.get(SCENES)[1]  # heard from just now
    feed.put_state(state, now=2.0, counters={}, force=True)
    feed.put_state(state, now=3.0, counters={}, force=True)
    (down,) = board.get(SCENES)[1]
    assert (down.stream, down.seq, down.kinds, down.thumbnail) == ("cam0", 4, ("stream_down",), None)
    feed.on_message(record(5), 3.5)  # back: it may be listed down again later
    feed.put_state(state, now=3.6, counters={}, force=True)
    assert len(board.get(SCENES)[1]) == 1
    feed.put_state(state, now=4.0, counters={}, force=True)
    assert [s.kinds for s in board.get(SCENES)[1]] == [("stream_down",), ("stream_down",)]
    feed.on_message(EndOfStream("cam0", 5, {}), 4.5)  # ended: not down
    feed.put_state(state, now=5.0, counters={}, force=True)
    assert len(board.get(SCENES)[1]) == 2


def test_the_search_apis_document_takes_the_hits_fields_without_psycopg():
    """A web viewer without a database has no psycopg: the OpenAPI document's Hit comes from
    storage/hits.py, which needs none, and is the same as `encoders search --format json`'s."""
    program = (
        "import sys\n"
        "sys.modules['psycopg'] = sys.modules['pgvector'] = None  # as where they are not installed\n"
        "from encoders.services.viewer.web.openapi import HIT\n"
        "from encoders.shared.storage.hits import Hit\n"
        "assert tuple(HIT['required']) == Hit.JSON_FIELDS == tuple(HIT['properties'])\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
