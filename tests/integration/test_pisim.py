"""pisim over real HTTP: the Pi's wire format, pacing, sources and scene cuts."""

from __future__ import annotations

import io
import itertools
import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from encoders.services.pisim.config import PisimConfig
from encoders.services.pisim.main import SourceError, make_server, serve_in_thread
from encoders.shared.settings import SettingsError

from ..conftest import wait_for

W, H = 160, 120
PART_HEAD = re.compile(rb"--FRAME\r\nContent-Type: image/jpeg\r\nContent-Length: (\d+)\r\n\r\n")


@pytest.fixture
def pisim():
    """start(**settings) -> (server, base URL); every server is closed after the test."""
    servers = []

    def start(**settings):
        settings = {"port": 0, "width": W, "height": H, **settings}
        server, url = serve_in_thread(PisimConfig(**settings))
        servers.append(server)
        return server, url

    yield start
    for server in servers:
        server.close()


def read_stream(url: str, n: int, *, timeout: float = 10.0) -> tuple[list[bytes], list[float], bool, httpx.Headers]:
    """Up to ``n`` parts, parsed strictly as the Pi lays them out.

    Returns (JPEGs, arrival times, whether the closing boundary and the end of the
    connection came, response headers).
    """
    jpegs: list[bytes] = []
    times: list[float] = []
    ended = False
    buf = b""
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", url + "/stream.mjpg", timeout=timeout) as resp:
        assert resp.status_code == 200
        chunks = resp.iter_raw()
        while len(jpegs) < n and time.monotonic() < deadline:
            m = PART_HEAD.match(buf)
            if m and len(buf) >= m.end() + int(m[1]) + 2:
                end = m.end() + int(m[1])
                jpegs.append(buf[m.end() : end])
                times.append(time.monotonic())
                assert buf[end : end + 2] == b"\r\n", "each part ends with CRLF"
                buf = buf[end + 2 :]
                continue
            if buf.startswith(b"--FRAME--\r\n"):
                ended = next(chunks, None) is None and buf == b"--FRAME--\r\n"
                break
            assert not buf or b"--FRAME".startswith(buf[:7]), f"unexpected bytes {buf[:40]!r}"
            chunk = next(chunks, None)
            if chunk is None:
                break
            buf += chunk
        return jpegs, times, ended, resp.headers


def pixels(jpeg: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(jpeg))
    img.load()
    assert img.format == "JPEG" and img.mode == "RGB"
    return np.asarray(img, dtype=np.float32)


def test_health_reports_settings_and_counters(pisim):
    server, url = pisim(fps=30)
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and "synthetic" in health["source"]
    assert (health["size"], health["width"], health["height"], health["fps"]) == (f"{W}x{H}", W, H, 30)
    assert (health["frames_served"], health["clients"]) == (0, 0)
    with httpx.stream("GET", url + "/stream.mjpg") as resp:
        chunks = resp.iter_raw()  # not left by a break: httpx 0.29 closes the stream when its iterator is
        while server.frames_served < 3:
            next(chunks)
        health = httpx.get(url + "/health").json()
        assert health["clients"] == 1 and health["frames_served"] >= 3
    # The server notices the client has left at its next write.
    wait_for(lambda: httpx.get(url + "/health").json()["clients"] == 0, 3, "the client to be counted out")
    assert httpx.get(url + "/nothing-here").status_code == 404


def test_stream_is_multipart_jpeg_at_the_configured_size(pisim):
    _, url = pisim(fps=0, quality=70)
    jpegs, _, _, headers = read_stream(url, 5)
    assert headers["content-type"] == "multipart/x-mixed-replace; boundary=FRAME"
    assert len(jpegs) == 5
    frames = [pixels(j) for j in jpegs]
    assert all(f.shape == (H, W, 3) for f in frames)
    # The scene moves (and has sensor noise): no two frames are the same.
    assert all(np.abs(a - b).mean() > 0.5 for a, b in itertools.pairwise(frames))


def test_fps_paces_the_stream(pisim):
    _, url = pisim(fps=20)
    _, times, _, _ = read_stream(url, 11)
    elapsed = times[-1] - times[0]  # 10 intervals of 50 ms
    assert 0.35 < elapsed < 0.9, elapsed
    _, url = pisim(fps=0)
    _, times, _, _ = read_stream(url, 11)
    assert times[-1] - times[0] < 0.35  # as fast as possible: well under the paced half second


def test_max_frames_ends_each_clients_own_stream(pisim):
    server, url = pisim(fps=100, max_frames=4)  # paced: frame i shows time i/fps, the same for every client
    first, _, ended, _ = read_stream(url, 10)
    assert len(first) == 4 and ended
    second, _, ended, _ = read_stream(url, 10)
    assert len(second) == 4 and ended
    assert second == first  # every client starts its own sequence from the beginning
    assert server.health()["clients_served"] == 2


def test_folder_of_images_in_name_order_resized_and_looping(pisim, tmp_path):
    colours = {"a.jpg": (220, 30, 30), "b.png": (30, 30, 220), "c.bmp": (30, 200, 30)}
    sizes = {"a.jpg": (200, 100), "b.png": (50, 40), "c.bmp": (64, 64)}
    for name in ("c.bmp", "a.jpg", "b.png"):
        Image.new("RGB", sizes[name], colours[name]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    server, url = pisim(fps=0, source=str(tmp_path), max_frames=7)
    assert "3 images" in server.health()["source"]
    jpegs, _, ended, _ = read_stream(url, 10)
    assert len(jpegs) == 7 and ended
    expected = [colours[n] for n in ("a.jpg", "b.png", "c.bmp")] * 3
    for jpeg, colour in zip(jpegs, expected, strict=False):
        frame = pixels(jpeg)
        assert frame.shape == (H, W, 3)
        assert np.abs(frame.mean(axis=(0, 1)) - colour).max() < 8


def test_video_file_resized_and_looping(pisim, tmp_path):
    import cv2  # the optional pisim-video extra; the test environment has it

    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    levels = [20, 120, 230]
    for level in levels:
        writer.write(np.full((48, 64, 3), level, np.uint8))
    writer.release()
    server, url = pisim(fps=0, source=path, max_frames=7)
    assert "video" in server.health()["source"]
    jpegs, _, ended, _ = read_stream(url, 10)
    assert len(jpegs) == 7 and ended
    means = [pixels(j).mean() for j in jpegs]
    assert all(pixels(j).shape == (H, W, 3) for j in jpegs)
    assert np.allclose(means, (levels * 3)[:7], atol=8), means


def test_scene_cuts_change_the_picture_and_the_seed_fixes_it(pisim):
    # 40 fps with a cut every 0.125 s: frames 0-4 are one scene, 5-9 the next.
    _, url = pisim(fps=40, scene_every=0.125, seed=3, max_frames=10)
    frames = [pixels(j) for j in read_stream(url, 10)[0]]
    steps = [np.abs(a - b).mean() for a, b in itertools.pairwise(frames)]
    cut = steps[4]
    within = steps[:4] + steps[5:]
    assert min(within) > 0.5, "shapes drift and noise changes within a scene"
    assert cut > 3 * max(within), (cut, within)
    # Deterministic from the seed; another seed, another picture.
    _, same = pisim(fps=40, scene_every=0.125, seed=3, max_frames=1)
    _, other = pisim(fps=40, scene_every=0.125, seed=4, max_frames=1)
    first = read_stream(url, 1)[0][0]
    assert read_stream(same, 1)[0][0] == first
    assert read_stream(other, 1)[0][0] != first


def test_bad_sources_are_refused_with_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        make_server(PisimConfig(port=0, source=str(tmp_path / "missing.mp4")))
    with pytest.raises(SourceError, match="holds no images"):
        make_server(PisimConfig(port=0, source=str(tmp_path)))
    (tmp_path / "clip.mp4").write_bytes(b"not a video at all")
    with pytest.raises(SourceError, match="cannot read video file"):
        make_server(PisimConfig(port=0, source=str(tmp_path / "clip.mp4")))
    with pytest.raises(SettingsError, match="quality"):  # the setting's bounds refuse it before any source
        make_server(PisimConfig(port=0, quality=101))


def test_command_logs_its_url_and_stops_on_sigterm(tmp_path):
    log_path = tmp_path / "pisim.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "encoders",
                "pisim",
                "--port",
                "0",
                "--fps",
                "10",
                "--width",
                str(W),
                "--height",
                str(H),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        found = wait_for(
            lambda: re.search(r"at (http://127\.0\.0\.1:(\d+))/stream\.mjpg", log_path.read_text()),
            15,
            "pisim to log its URL",
        )
        url = found[1]
        assert int(found[2]) != 0
        assert httpx.get(url + "/health").json()["status"] == "ok"
        jpegs, _, _, _ = read_stream(url, 2)
        assert len(jpegs) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "received SIGTERM" in text
    assert re.search(r"pisim stopped: \d+ frames served to 1 client", text), text
