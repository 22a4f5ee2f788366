"""`encoders view --web`: a real viewer process, real ZeroMQ publishers standing in for ingest
and metrics, real HTTP clients (and raw sockets where the test needs to read slowly)."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import psutil
import pytest
import zmq

from encoders.services.viewer import overlay
from encoders.services.viewer.web.thumbnails import make_thumbnail
from encoders.shared import zmqio
from encoders.shared.messages import Frame, MetricsRecord, Stats

from ..conftest import endpoint, free_port, self_signed, wait_for


def start_web_viewer(service, publishers, *extra: str, port: int | None = None):
    frames, metrics = publishers
    port = port or free_port()
    viewer = service(
        "view",
        "--frames",
        endpoint(frames),
        "--metrics",
        endpoint(metrics),
        "--web",
        f"127.0.0.1:{port}",
        *extra,
        env={"DISPLAY": ""},
    )  # no display: the web needs none
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: viewer.proc.poll() is not None or "web viewer on" in viewer.output(), 20, "the web server")
    assert viewer.proc.poll() is None, viewer.output()
    return viewer, base


def picture(seq: int, w: int = 320, h: int = 240) -> bytes:
    """A frame that differs from the next one: a bar that moves with seq over gradients."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, w)[None, :]
    img[:, :, 1] = np.linspace(255, 0, h)[:, None]
    x = (seq * 7) % (w - 20)
    img[:, x : x + 20] = (0, 0, 255)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return jpeg.tobytes()


def metrics_record(seq: int, t: float, *, drift=0.02, scene=False, stream="cam0", thumbnail=b"") -> MetricsRecord:
    return MetricsRecord(
        stream=stream,
        seq=seq,
        t_capture=t,
        t_encoded=t,
        worker="w1",
        model="m",
        similarity=1 - drift,
        drift=drift,
        fps=9.5,
        scene_change=scene,
        counts={"embedded": seq + 1, "dropped": 2, "skipped": 0, "lost": 0},
        thumbnail=thumbnail,
    )


def decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a JPEG"
    return img


def read_part(stream) -> bytes:
    """The next JPEG of a multipart/x-mixed-replace body (a file-like object of the raw bytes,
    just after a boundary line). Parts carry no Content-Length: each ends at the next boundary."""
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers.get("content-type") == "image/jpeg", headers
    body = bytearray()
    while not body.endswith(b"\r\n--frame\r\n"):
        line = stream.readline()
        assert line, "the stream ended inside a part"
        body += line
    return bytes(body[: -len(b"\r\n--frame\r\n")])


def open_mjpeg(port: int, path: str, rcvbuf: int | None = None) -> tuple[socket.socket, object]:
    """A raw HTTP/1.0 client, as the simplest MJPEG readers are (HTTP/1.1 clients get the same parts,
    chunked): the response headers read, the body's file returned."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect, so the window stays small
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    body = sock.makefile("rb", buffering=0 if rcvbuf else -1)
    status = body.readline()
    assert b" 200 " in status, status
    while body.readline() not in (b"\r\n", b""):
        pass
    assert body.readline() == b"--frame\r\n"
    return sock, body


def test_page_video_numbers_and_scene_changes_are_served(service, publishers):
    frames, metrics = publishers
    viewer, base = start_web_viewer(service, publishers)
    http = httpx.Client(base_url=base, timeout=10)

    page = http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="video"' in page.text and "static/viewer.js" in page.text
    assert http.get("/static/viewer.js").status_code == 200
    assert http.get("/api/search?text=cat").status_code == 404  # no database: search is off, and says so
    assert "--database-url" in http.get("/api/search?text=cat").json()["error"]

    # Publish until the viewer's snapshot shows the ingest and metrics numbers sent.
    seq, last = 0, b""

    def publish(n: int, scene_at: int | None = None) -> None:
        nonlocal seq, last
        for _ in range(n):
            t = time.time()
            last = picture(seq)
            zmqio.send(frames, Frame("cam0", seq, t, 320, 240, last), topic=True)
            scene = seq == scene_at
            # As a worker makes it of the frame it decoded: the record carries it to the viewer.
            thumbnail = (make_thumbnail(last) or b"") if scene else b""
            zmqio.send(
                metrics,
                metrics_record(seq, t, drift=0.4 if scene else 0.02, scene=scene, thumbnail=thumbnail),
                topic=True,
            )
            seq += 1
            time.sleep(0.01)  # paces: a camera's frames come apart
        zmqio.send(frames, Stats("ingest", "cam0", {"published": seq + 100, "workers": 3, "fps": 14.5}), topic=True)

    def numbers():
        state = http.get("/api/state").json()
        # Ingest's Stats and metrics' records come on two sockets: wait until both have come through.
        return state if state["totals"]["frames_in"] == seq + 100 and state["streams"][0]["seq"] == seq - 1 else None

    # A subscriber misses what is sent before its connection is up: publish until something arrives.
    def published_and_seen():
        publish(1)
        return http.get("/api/state").json()["streams"]

    wait_for(published_and_seen, 10, "the viewer to subscribe")
    publish(20)
    state = wait_for(numbers, 5, "the published numbers in /api/state")
    cam0 = state["streams"][0]
    assert state["totals"]["frames_in"] == seq + 100  # ingest's count, not the viewer's
    assert state["totals"]["embedded"] == seq and state["totals"]["dropped"] == 2
    assert cam0["drift"] == pytest.approx(0.02) and cam0["fps_in"] == 14.5 and state["search"] is False
    drift = http.get("/api/drift").json()["cam0"]
    assert len(drift) == seq and drift[-1][1] == pytest.approx(0.02)

    # The newest frame exactly as the camera sent it, as a JPEG and as an MJPEG stream.
    publish(1)
    assert wait_for(lambda: http.get("/frame.jpg?stream=cam0").content == last, 5, "the newest frame")
    raw_sock, raw = open_mjpeg(int(base.rsplit(":", 1)[1]), "/video.mjpg?stream=cam0")
    try:
        publish(1)
        sent = {last}
        got = read_part(raw)
        publish(1)
        sent.add(last)
        assert got in sent | {picture(seq - 3)}
    finally:
        raw_sock.close()

    # The overlay video: the newest frame with its overlay drawn on it, as the window shows it,
    # though nobody was watching it when that frame came (HTTP/1.1 here: chunked, as browsers get it).
    def newest_at_the_viewer() -> bool:
        state = http.get("/api/state").json()
        return state["streams"][0]["seq"] == seq - 1 and http.get("/frame.jpg?stream=cam0").content == last

    wait_for(newest_at_the_viewer, 5, "the newest frame and record at the viewer")
    with http.stream("GET", "/video.mjpg") as resp:
        assert resp.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        buf = b""
        for chunk in resp.iter_bytes():
            buf += chunk
            if buf.count(b"--frame\r\n") >= 2:
                break
    part = buf.split(b"--frame\r\n")[1]
    head, jpeg = part.split(b"\r\n\r\n", 1)
    assert head == b"Content-Type: image/jpeg"
    shown = decode(jpeg[:-2])
    frame_img = decode(last)
    expected = overlay.draw_overlay(frame_img, "cam0", metrics_record(seq - 1, 0.0), 0.0)
    wrong = overlay.draw_overlay(frame_img, "cam0", metrics_record(seq - 1, 0.0, drift=0.3), 0.0)
    for box in [overlay.field_box(f) for f in ("stream", "similarity", "drift", "counts")] + [overlay.bar_box()]:
        x0, y0, x1, y1 = box
        diff = np.abs(shown[y0:y1, x0:x1].astype(int) - expected[y0:y1, x0:x1]).mean()
        assert diff < 6, (box, diff)
    # ...and the drift's text is its own: pixels far off (a stroke where none should be) are few.
    x0, y0, x1, y1 = overlay.field_box("drift")

    def strokes_off(image):
        return int((np.abs(shown[y0:y1, x0:x1].astype(int) - image[y0:y1, x0:x1]).sum(axis=2) > 240).sum())

    assert strokes_off(expected) * 4 < strokes_off(wrong), (strokes_off(expected), strokes_off(wrong))
    below = overlay.panel_box()[3] + 4
    assert np.abs(shown[below:].astype(int) - frame_img[below:]).mean() < 3  # the video itself

    # A scene change flagged by the core shows with the thumbnail its record carries (of its own frame).
    publish(3, scene_at=seq + 1)
    scene_seq = seq - 2
    scenes = wait_for(lambda: http.get("/api/scenes").json(), 5, "a scene change")
    assert scenes[0]["seq"] == scene_seq and scenes[0]["drift"] == pytest.approx(0.4)
    served = http.get(scenes[0]["thumbnail"])
    assert served.headers["content-type"] == "image/jpeg" and served.headers["x-content-type-options"] == "nosniff"
    assert served.content == make_thumbnail(picture(scene_seq))  # as the record carried it
    thumb = decode(served.content)
    assert thumb.shape == (144, 192, 3)
    expected = cv2.resize(decode(picture(scene_seq)), (192, 144), interpolation=cv2.INTER_AREA)
    other = cv2.resize(decode(picture(scene_seq + 1)), (192, 144), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb.astype(int) - expected).mean() < np.abs(thumb.astype(int) - other).mean()

    # The same numbers arrive as Server-Sent Events, with the drift window, then only new points.
    with http.stream("GET", "/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events: list[tuple[str, Any]] = []
        name = ""
        lines = resp.iter_lines()
        while sum(1 for n, _ in events if n == "state") < 3:
            publish(1)
            line = next(lines)
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    states = [e for n, e in events if n == "state"]
    assert states[0]["drift"]["cam0"]["reset"] and len(states[0]["drift"]["cam0"]["points"]) > 10
    assert states[0]["totals"]["workers"] == 3
    later = [p for s in states[1:] for p in s["drift"].get("cam0", {"points": []})["points"]]
    assert later and not any(s["drift"]["cam0"]["reset"] for s in states[1:] if "cam0" in s["drift"])
    assert [e[0]["seq"] for n, e in events if n == "scenes"] == [scene_seq]  # once, on connecting

    assert viewer.stop() == 0
    out = viewer.output()
    assert "viewer stopped" in out and "web_served" in out


def test_ffmpeg_plays_both_videos(service, publishers):
    """FFmpeg's MJPEG-over-HTTP reader, the one ffplay uses (through OpenCV's own FFmpeg here)."""
    frames, _ = publishers
    viewer, base = start_web_viewer(service, publishers)
    stop = threading.Event()

    def publish():
        seq = 0
        while not stop.wait(1 / 20):
            zmqio.send(frames, Frame("cam0", seq, time.time(), 320, 240, picture(seq)), topic=True)
            seq += 1

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        wait_for(lambda: httpx.get(base + "/frame.jpg?stream=cam0", timeout=5).status_code == 200, 10, "a frame")
        sent = [decode(picture(seq)) for seq in range(40)]  # the bar's positions repeat every 40 frames
        for path in ("/video.mjpg?stream=cam0", "/video.mjpg"):
            capture = cv2.VideoCapture(base + path, cv2.CAP_FFMPEG)
            try:
                assert capture.isOpened(), path
                for _ in range(3):
                    ok, img = capture.read()
                    assert ok and img.shape == (240, 320, 3), path
                # Below the overlay panel, the picture is one of the frames sent.
                below = overlay.panel_box()[3] + 4
                assert min(np.abs(img[below:].astype(int) - f[below:]).mean() for f in sent) < 3, path
            finally:
                capture.release()
    finally:
        stop.set()
        publisher.join(5)
    assert viewer.stop() == 0


def test_a_token_guards_every_request_and_the_page_carries_it(service, publishers):
    viewer, base = start_web_viewer(service, publishers, "--web-token", "s3cret")
    port = base.rsplit(":", 1)[1]
    http = httpx.Client(base_url=base, timeout=10)
    for path in ("/", "/static/viewer.js", "/api/state", "/video.mjpg", "/events", "/frame.jpg"):
        assert http.get(path).status_code == 401, path
    assert http.get("/api/state?token=wrong").status_code == 401
    assert http.get("/api/state", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert http.get("/api/state?token=s3cret").status_code == 200
    page = http.get("/?token=s3cret")
    assert page.status_code == 200
    assert page.cookies.get(f"encoders_token_{port}") == "s3cret"
    # The cookie alone opens the rest (the page's script, images and events).
    assert (
        httpx.get(f"{base}/static/viewer.js", cookies={f"encoders_token_{port}": "s3cret"}, timeout=10).status_code
        == 200
    )
    assert viewer.stop() == 0
    assert "s3cret" not in viewer.output()


def test_listening_beyond_localhost_without_a_token_is_refused(service, publishers):
    frames, metrics = publishers
    port = free_port()
    viewer = service("view", "--frames", endpoint(frames), "--metrics", endpoint(metrics), "--web", f"0.0.0.0:{port}")
    assert viewer.wait(20) == 2
    assert "set a token too" in viewer.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_over_tls_the_page_and_its_token_travel_encrypted(service, publishers, tmp_path):
    """Issue #13: ENCODERS_WEB_CERT / ENCODERS_WEB_KEY serve https (the token then never in clear);
    plain http to that port gets nothing, and the token's cookie is https-only."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    viewer, _ = start_web_viewer(
        service, publishers, "--web-token", "s3cret", "--web-cert", str(cert), "--web-key", str(key), port=port
    )
    assert f"web viewer on https://127.0.0.1:{port}/" in viewer.output()
    https = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=cert))
    assert https.get("/api/state?token=s3cret").status_code == 200
    assert https.get("/api/state").status_code == 401
    page = https.get("/?token=s3cret")
    assert page.status_code == 200 and "Secure" in page.headers["set-cookie"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/state?token=s3cret", timeout=5)
    assert viewer.stop() == 0
    # A key that is not the certificate's: said at start, in one line.
    (tmp_path / "other").mkdir()
    other_cert, _ = self_signed(tmp_path / "other")
    bad = service("view", "--web", f"127.0.0.1:{free_port()}", "--web-cert", str(other_cert), "--web-key", str(key))
    assert bad.wait(20) == 2
    assert len(error_lines(bad.output())) == 1 and "cannot serve the web viewer" in bad.output()


def test_connections_beyond_the_cap_are_closed_and_slow_headers_cut_off(service, publishers):
    """Issue #13: 1,100 half-sent requests stayed open. Now the viewer holds at most
    ENCODERS_WEB_MAX_PER_CLIENT connections of one client (issue #22: a cap of all of them let
    one client shut out the others) and gives a request's headers ENCODERS_WEB_HEADER_TIMEOUT
    seconds, counting both; a video being watched is not a request in progress: never cut.
    (Strangers' connections and the server's own cap: test_viewer_web_door.py.)"""
    port = free_port()
    env_cap = {
        "ENCODERS_WEB_MAX_PER_CLIENT": "8",
        "ENCODERS_WEB_HEADER_TIMEOUT": "1",
        "ENCODERS_WEB_TOKEN_TIMEOUT": "60",  # the header timeout is what cuts the slow ones here
    }
    frames, metrics = publishers
    viewer = service(
        "view", "--frames", endpoint(frames), "--metrics", endpoint(metrics), "--web", f"127.0.0.1:{port}",
        env={"DISPLAY": "", **env_cap},
    )  # fmt: skip
    wait_for(lambda: "web viewer on" in viewer.output(), 20, "the web server")
    video, _ = open_mjpeg(port, "/video.mjpg")
    slow = []
    for _ in range(7):  # with the video: the cap
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/state HTTP/1.1\r\nHo")
        slow.append(sock)
    trickling = threading.Event()

    def trickle() -> None:  # one of them keeps sending a byte now and then: still cut off
        while not trickling.wait(0.2):
            try:
                slow[0].sendall(b"x")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    # Asked from another address (the per-client cap is this one's): until the server took all 8
    # (each question is a connection too: counted out).
    asked = itertools.count(1)
    wait_for(lambda: web_counts(port)["connections"] - next(asked) >= 8, 20, "the server to take the 8 connections")
    extra = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    for sock in extra:  # closed at once, before a byte is read
        sock.settimeout(2)
        assert closed(sock), "a connection beyond the cap was kept"
    wait_for(lambda: web_counts(port)["header_timeouts"] >= 7, 20, "the slow requests to be cut off")
    trickling.set()
    for sock in slow:
        sock.settimeout(0.5)
        assert closed(sock), "a request whose headers took over a second was kept"
    video.settimeout(0.5)
    assert not closed(video), "the video being watched was cut off"
    web = httpx.get(f"http://127.0.0.1:{port}/api/state", timeout=5).json()["web"]
    assert web["refused"] == 5 and web["header_timeouts"] == 7
    for sock in [video, *slow, *extra]:
        sock.close()
    assert viewer.stop() == 0
    # Logged once each, then counted.
    assert viewer.output().count("refused a web connection") == 1
    assert viewer.output().count("no complete request within 1 s") == 1


def web_counts(port: int) -> dict:
    """The web server's counts, asked from 127.0.0.2: another client than the test's others."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=5) as client:
        return client.get(f"http://127.0.0.1:{port}/api/state").json()["web"]


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_port_in_use_is_a_clear_error(service, publishers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        frames, metrics = publishers
        viewer = service(
            "view",
            "--frames",
            endpoint(frames),
            "--metrics",
            endpoint(metrics),
            "--web",
            f"127.0.0.1:{taken.getsockname()[1]}",
        )
        assert viewer.wait(20) == 2
    assert "cannot serve the web viewer on 127.0.0.1:" in viewer.output()
    assert len(error_lines(viewer.output())) == 1 and "Traceback" not in viewer.output()


@pytest.mark.parametrize("which", ["--frames", "--metrics"])
def test_an_endpoint_that_does_not_parse_exits_2_with_one_line_naming_it(service, publishers, which):
    frames, metrics = publishers
    endpoints = {"--frames": endpoint(frames), "--metrics": endpoint(metrics), which: "tcp://nonsense"}
    viewer = service("view", *(x for pair in endpoints.items() for x in pair), "--web", f"127.0.0.1:{free_port()}")
    assert viewer.wait(20) == 2
    output = viewer.output()
    (line,) = error_lines(output)  # the settings banner names it too, at INFO
    assert "cannot connect tcp://nonsense" in line and "Traceback" not in output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR " in line]


def noise_jpeg(rng) -> bytes:
    """~150 kB: noise does not compress, so queued frames would show in memory at once."""
    img = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return jpeg.tobytes()


def test_a_slow_client_skips_frames_at_the_viewer_and_slows_nobody(service, publishers):
    frames, metrics = publishers
    viewer, base = start_web_viewer(service, publishers)
    port = int(base.rsplit(":", 1)[1])
    rng = np.random.default_rng(3)
    jpegs = [noise_jpeg(rng) for _ in range(8)]
    fps, seconds = 60, 4.0

    # The slow one: a 4 kB receive window, 2 kB read every 0.1 s (20 kB/s: a frame every ~8 s).
    slow_sock, _slow = open_mjpeg(port, "/video.mjpg?stream=cam0", rcvbuf=4096)
    fast_sock, fast = open_mjpeg(port, "/video.mjpg?stream=cam0")
    got = {"fast": 0, "slow_bytes": 0}
    done = threading.Event()

    def read_fast():
        try:
            while not done.is_set():
                assert read_part(fast) in jpegs
                got["fast"] += 1
        except (OSError, AssertionError):
            pass

    def read_slow():
        while not done.is_set():
            got["slow_bytes"] += len(slow_sock.recv(2048))
            time.sleep(0.1)  # paces: the slow client's reading

    readers = [threading.Thread(target=read_fast), threading.Thread(target=read_slow)]
    for r in readers:
        r.start()
    rss = psutil.Process(viewer.proc.pid)
    try:
        # Upstream: frames (and their records, as metrics would send) at the camera's pace; time each send.
        worst, start, seq = 0.0, time.monotonic(), 0
        rss_early = None
        while (elapsed := time.monotonic() - start) < seconds:
            t0 = time.monotonic()
            # NOBLOCK: a send that would have to wait raises instead.
            zmqio.send(
                frames,
                Frame("cam0", seq, time.time(), 480, 360, jpegs[seq % len(jpegs)]),
                topic=True,
                flags=zmq.NOBLOCK,
            )
            zmqio.send(metrics, metrics_record(seq, time.time()), topic=True, flags=zmq.NOBLOCK)
            worst = max(worst, time.monotonic() - t0)
            seq += 1
            if rss_early is None and elapsed > 1.0:
                rss_early = rss.memory_info().rss
            time.sleep(max(0.0, seq / fps - (time.monotonic() - start)))  # paces: the camera's frame rate
        published = seq
        rss_late = rss.memory_info().rss

        def taken_to_the_last_record() -> dict | None:
            state = httpx.get(f"{base}/api/state", timeout=10).json()
            return state if state["streams"][0]["seq"] == published - 1 else None

        state = wait_for(taken_to_the_last_record, 5, "the viewer to take the last record")
    finally:
        done.set()
        for sock in (slow_sock, fast_sock):
            sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv
            sock.close()
        for r in readers:
            r.join(5)

    # Upstream went on at the camera's pace (the test's own threads share one GIL, hence the slack)
    # and the viewer took every frame from it, slow client or not.
    assert worst < 0.5, f"a send to the viewer took {worst * 1000:.0f} ms: the publisher was held up"
    assert state["viewer"]["frames_received"] >= 0.95 * published, (state["viewer"], published)
    clients = sorted((c for c in state["web"]["clients"] if c["what"] == "cam0"), key=lambda c: c["sent"])
    assert len(clients) == 2, state["web"]
    slow_view, fast_view = clients
    # The fast client kept up with the camera while the slow one stalled.
    assert got["fast"] >= 0.6 * published, (got, published, state["web"])
    assert fast_view["sent"] >= 0.6 * published
    # The slow one got the newest frame whenever it could take one, and skipped the rest, counted
    # ('sent' includes the few frames the kernel's send buffer holds for it).
    assert slow_view["sent"] <= 8 and slow_view["skipped"] >= published * 0.8, slow_view
    assert slow_view["sent"] + slow_view["skipped"] >= published - 5
    assert state["web"]["frames_skipped"] >= slow_view["skipped"]
    # Nothing queued for it: the viewer's memory did not grow with the frames it could not send
    # (queued, the frames of ~150 kB each would be ~35 MB).
    assert rss_early is not None
    grown = (rss_late - rss_early) / 2**20
    assert grown < 15, f"the viewer grew by {grown:.0f} MB while a client was slow"
    assert viewer.stop() == 0


@pytest.fixture
def runs_dir():
    """A runs folder for the embedded PostgreSQL (outside pytest's tmp_path, which its user cannot reach)."""
    folder = Path(tempfile.mkdtemp(prefix="encoders-pg-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(120)
def test_the_all_in_one_command_serves_the_page_for_its_run(service, tiny_model, runs_dir):
    cam = free_port()
    service("pisim", "--port", str(cam), "--fps", "30", "--width", "320", "--height", "240")
    wait_for(lambda: _answers(f"http://127.0.0.1:{cam}/health"), 20, "pisim")
    port = free_port()
    run = service(
        "--stream",
        f"http://127.0.0.1:{cam}/stream.mjpg",
        "--no-display",
        "--web",
        f"127.0.0.1:{port}",
        "--max-frames",
        "240",
        "--runs-dir",
        str(runs_dir),
        env=tiny_model,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(base + "/") or run.proc.poll() is not None, 60, "the run's web viewer")
    assert run.proc.poll() is None, run.output()[-3000:]
    assert 'id="video"' in httpx.get(base + "/", timeout=5).text

    def embedding():
        state = httpx.get(base + "/api/state", timeout=5).json()
        return state if (state["totals"]["embedded"] or 0) > 0 and state["totals"]["workers"] else None

    state = wait_for(embedding, 30, "the page's numbers to show frames embedded")
    assert state["streams"][0]["stream"] == "cam0" and state["totals"]["frames_in"] > 0
    assert state["totals"]["workers"] == 1
    frame = httpx.get(base + "/frame.jpg?stream=cam0", timeout=5)
    assert decode(frame.content).shape == (240, 320, 3)
    sock, body = open_mjpeg(port, "/video.mjpg")
    try:
        assert decode(read_part(body)).shape == (240, 320, 3)  # the overlay video of the one camera
    finally:
        sock.close()
    # --max-frames ends the run by itself, the web viewer with it.
    assert run.wait(60) == 0, run.output()[-3000:]
    assert "every stream has ended" in run.output()
    assert not _answers(base + "/")
    # The run's database was handed to the viewer: its search box is on.
    assert "web search on" in run.output()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
