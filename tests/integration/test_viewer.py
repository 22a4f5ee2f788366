"""The viewer as a person sees it: a real process, a real X server (Xvfb), real ZeroMQ publishers.

The test publishes frames and metrics records as ingest and metrics would, takes a
screenshot of the X screen, and compares the window's pixels with what the overlay module
draws for the same values; then it quits the viewer the ways a person would.

These tests need Xvfb and xdotool (Debian: apt-get install -y xvfb xdotool). Without them
they fail, not skip: a display test that silently does not run tests nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ImageGrab

from encoders.services.viewer import layout, overlay
from encoders.services.viewer.plot import DriftPlot
from encoders.services.viewer.subscriptions import core_lines, listening_lines
from encoders.shared import zmqio
from encoders.shared.messages import Frame, MetricsRecord

from ..conftest import endpoint, free_port, wait_for

WIDTH, HEIGHT = 640, 480  # the placeholder's size too, so the window keeps its size and place


class Viewer:
    def __init__(self, display: str | None, frames: str, metrics: str, log: Path, *extra: str) -> None:
        self.title = f"viewer-test-{uuid.uuid4().hex[:8]}"
        self.display = display
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        if display:
            env["DISPLAY"] = display
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "encoders",
                "view",
                "--frames",
                frames,
                "--metrics",
                metrics,
                "--window",
                self.title,
                *extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )

    def xdotool(self, *args: str) -> str:
        return subprocess.run(
            ["xdotool", *args],
            env={**os.environ, "DISPLAY": self.display or ""},
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def window(self, size: tuple[int, int], timeout: float = 15.0) -> tuple[int, tuple[int, int]]:
        """The window's id and position, once it is mapped and has this size (it opens small,
        and takes the image's size at the first imshow)."""
        deadline = time.monotonic() + timeout
        seen = "no window"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"viewer exited with {self.proc.returncode}:\n{self.output()}"
            ids = self.xdotool("search", "--onlyvisible", "--name", f"^{self.title}$").split()
            if ids:
                seen = self.xdotool("getwindowgeometry", ids[0])
                pos = re.search(r"Position: (\d+),(\d+)", seen)
                if pos and f"Geometry: {size[0]}x{size[1]}" in seen:
                    return int(ids[0]), (int(pos.group(1)), int(pos.group(2)))
            time.sleep(0.1)  # the poll interval
        pytest.fail(
            f"no {size[0]}x{size[1]} window named {self.title} after {timeout}s ({seen.strip()}):\n{self.output()}"
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"viewer still running {timeout}s later:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_viewer(tmp_path):
    started: list[Viewer] = []

    def start(display, frames, metrics, *extra):
        v = Viewer(display, frames, metrics, tmp_path / f"viewer{len(started)}.log", *extra)
        started.append(v)
        return v

    yield start
    for v in started:
        v.kill()


def screenshot(display: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """The screen's pixels inside (x, y, width, height), as BGR."""
    x, y, w, h = box
    rgb = np.asarray(ImageGrab.grab(bbox=(x, y, x + w, y + h), xdisplay=display).convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def pattern_jpeg() -> bytes:
    """Gradients and random blocks: no two places alike, so a misplaced image cannot pass."""
    rng = np.random.default_rng(7)
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, WIDTH)[None, :]
    img[:, :, 1] = np.linspace(255, 0, HEIGHT)[:, None]
    blocks = rng.integers(0, 256, (HEIGHT // 32, WIDTH // 32), dtype=np.uint8)
    img[:, :, 2] = np.kron(blocks, np.ones((32, 32), np.uint8))
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return jpeg.tobytes()


def metrics_record(seq: int, t: float) -> MetricsRecord:
    return MetricsRecord(
        stream="cam0",
        seq=seq,
        t_capture=t,
        t_encoded=t,
        worker="w1",
        model="ViT-B-32",
        similarity=0.987,
        drift=0.013,
        rolling={"mean": 0.02, "std": 0.01, "min": 0.0, "max": 0.05, "count": seq},
        fps=14.2,
        counts={"embedded": 120, "dropped": 3, "skipped": 0, "lost": 0},
    )


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def region(img: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


@pytest.mark.display
def test_viewer_shows_the_frame_and_its_metrics_then_quits_on_q(display, publishers, start_viewer):
    frames, metrics = publishers
    viewer = start_viewer(display, endpoint(frames), endpoint(metrics))
    plot_w, plot_h = layout.plot_size(HEIGHT)
    wid, (x, y) = viewer.window((WIDTH + plot_w, HEIGHT))

    # Before any frame: where it is listening, and an empty plot.
    waiting = layout.placeholder(listening_lines([endpoint(frames)], endpoint(metrics)))
    wait_for(lambda: mean_abs_diff(screenshot(display, (x, y, WIDTH, HEIGHT)), waiting) <= 1.0, 10, "the placeholder")
    empty_plot = screenshot(display, (x + WIDTH, y, plot_w, plot_h))
    assert mean_abs_diff(empty_plot, DriftPlot(plot_w, plot_h).render({})) < 1.0

    # Frames and metrics as ingest and metrics publish them, 20 a second.
    jpeg = pattern_jpeg()
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    expected = overlay.draw_overlay(decoded, "cam0", metrics_record(0, 0.0), 20.0)
    checked = ("stream", "similarity", "drift", "counts")  # not fps: the viewer measures it
    px0, py0, px1, py1 = overlay.panel_box()
    outside_panel = np.ones((HEIGHT, WIDTH), bool)
    outside_panel[py0:py1, px0:px1] = False

    seq, shown, problems = 0, None, ["nothing shown yet"]
    deadline = time.monotonic() + 15
    while problems and time.monotonic() < deadline:
        for _ in range(5):
            t = time.time()
            zmqio.send(frames, Frame("cam0", seq, t, WIDTH, HEIGHT, jpeg), topic=True)
            zmqio.send(metrics, metrics_record(seq, t), topic=True)
            seq += 1
            time.sleep(0.05)  # paces: 20 frames a second
        shown = screenshot(display, (x, y, WIDTH, HEIGHT))
        problems = []
        if mean_abs_diff(shown[outside_panel], decoded[outside_panel]) > 2.0:
            problems.append("the video is not the frame sent")
        for name in checked:
            if mean_abs_diff(region(shown, overlay.field_box(name)), region(expected, overlay.field_box(name))) > 1.0:
                problems.append(f"the {name} text differs")
        if mean_abs_diff(region(shown, overlay.bar_box()), region(expected, overlay.bar_box())) > 1.0:
            problems.append("the drift bar differs")
    if problems:
        assert shown is not None
        cv2.imwrite(str(viewer.log.with_suffix(".png")), shown)
        pytest.fail(f"after {seq} frames: {'; '.join(problems)} (screenshot in {viewer.log.with_suffix('.png')})")
    # The drift is plotted: the plot is no longer the empty one.
    assert mean_abs_diff(screenshot(display, (x + WIDTH, y, plot_w, plot_h)), empty_plot) > 0.5

    viewer.xdotool("key", "--window", str(wid), "q")
    assert viewer.wait(10) == 0
    out = viewer.output()
    assert "quit key pressed" in out
    counted = re.search(r"'frames_shown': (\d+)", out)
    assert counted, out
    shown_count = int(counted.group(1))
    assert 0 < shown_count <= seq


@pytest.mark.display
def test_a_viewer_waiting_for_the_core_says_so_in_its_window(display, tmp_path):
    core = f"tcp://127.0.0.1:{free_port()}"  # nobody answers there
    viewer = Viewer(display, "", "", tmp_path / "viewer.log", "--core", core, "--no-plot")  # "": ask the core
    try:
        _, (x, y) = viewer.window((WIDTH, HEIGHT))
        asking = layout.placeholder(core_lines(core))
        wait_for(
            lambda: mean_abs_diff(screenshot(display, (x, y, WIDTH, HEIGHT)), asking) <= 1.0, 10, "the placeholder"
        )
        wait_for(lambda: "no answer from the core" in viewer.output(), 10, "the log to say so")
        assert f"no answer from the core at {core} (ENCODERS_CORE) for 3 s" in viewer.output()
        viewer.proc.send_signal(signal.SIGTERM)
        assert viewer.wait(10) == 0
    finally:
        viewer.kill()


def close_window(display: str, window: int) -> None:
    """Ask the window to close as a window manager's close button does (WM_DELETE_WINDOW).

    xdotool of Debian 12 can only destroy a window, which no person can do, so the
    client message is sent through libX11 (installed with Xvfb and xdotool).
    """
    x11 = ctypes.CDLL(ctypes.util.find_library("X11"))

    class ClientMessage(ctypes.Structure):
        _fields_ = [
            ("type", ctypes.c_int),
            ("serial", ctypes.c_ulong),
            ("send_event", ctypes.c_int),
            ("display", ctypes.c_void_p),
            ("window", ctypes.c_ulong),
            ("message_type", ctypes.c_ulong),
            ("format", ctypes.c_int),
            ("data", ctypes.c_long * 5),
        ]

    class XEvent(ctypes.Union):
        _fields_ = [("xclient", ClientMessage), ("pad", ctypes.c_long * 24)]

    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.POINTER(XEvent)]
    x11.XFlush.argtypes = x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    dpy = x11.XOpenDisplay(display.encode())
    assert dpy, f"cannot open display {display}"
    try:
        event = XEvent()
        event.xclient.type = 33  # ClientMessage
        event.xclient.window = window
        event.xclient.message_type = x11.XInternAtom(dpy, b"WM_PROTOCOLS", 0)
        event.xclient.format = 32
        event.xclient.data[0] = x11.XInternAtom(dpy, b"WM_DELETE_WINDOW", 0)
        assert x11.XSendEvent(dpy, window, 0, 0, ctypes.byref(event))
        x11.XFlush(dpy)
    finally:
        x11.XCloseDisplay(dpy)


@pytest.mark.display
@pytest.mark.parametrize(
    "how, log_line",
    [
        ("Escape", "quit key pressed"),
        ("close", "window closed"),
        ("SIGTERM", "received SIGTERM"),
        ("SIGINT", "received SIGINT"),
    ],
)
def test_viewer_ends_cleanly(how, log_line, display, publishers, start_viewer):
    frames, metrics = publishers
    viewer = start_viewer(display, endpoint(frames), endpoint(metrics), "--no-plot")
    wid, _ = viewer.window((WIDTH, HEIGHT))  # --no-plot: the video column alone
    if how == "close":
        close_window(display, wid)
    elif how.startswith("SIG"):
        viewer.proc.send_signal(getattr(signal, how))
    else:
        viewer.xdotool("key", "--window", str(wid), how)
    assert viewer.wait(10) == 0
    out = viewer.output()
    assert log_line in out and "viewer stopped" in out


def test_viewer_without_a_display_exits_2_and_says_why(publishers, start_viewer):
    frames, metrics = publishers
    viewer = start_viewer(None, endpoint(frames), endpoint(metrics))
    assert viewer.wait(20) == 2
    assert "no display: run with --no-display, or use X forwarding (DISPLAY is not set)" in viewer.output()


def test_viewer_with_an_unreachable_display_exits_2(publishers, start_viewer):
    frames, metrics = publishers
    viewer = start_viewer(":987", endpoint(frames), endpoint(metrics))
    assert viewer.wait(20) == 2
    assert "cannot reach the X server of DISPLAY=:987" in viewer.output()


@pytest.mark.display
def test_with_web_and_with_window_both_are_served_and_q_ends_both(display, publishers, start_viewer):
    import httpx

    frames, metrics = publishers
    port = free_port()
    viewer = start_viewer(
        display, endpoint(frames), endpoint(metrics), "--no-plot", "--web", f"127.0.0.1:{port}", "--with-window"
    )
    wid, _ = viewer.window((WIDTH, HEIGHT))
    state = httpx.get(f"http://127.0.0.1:{port}/api/state", timeout=5)
    assert state.status_code == 200 and state.json()["streams"] == []
    viewer.xdotool("key", "--window", str(wid), "q")
    assert viewer.wait(10) == 0
    assert "quit key pressed" in viewer.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
