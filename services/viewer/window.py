"""The viewer's OpenCV window: whether one can open here, and showing the video with its drift plot.

Q, q or ESC quits, as does closing the window. Opening it where there is no display exits 2
(StartupError) before OpenCV gets the chance to abort the process.
"""

from __future__ import annotations

import socket

import cv2
import numpy as np

from encoders.shared.runtime import StartupError

from . import layout
from .plot import DriftPlot

NO_DISPLAY = "no display: run with --no-display, or use X forwarding"
QUIT_KEYS = {ord("q"), ord("Q"), 27}  # 27 = ESC


class Window:
    """One named window; the drift plot beside the video unless ``plot`` is off."""

    def __init__(self, name: str, plot: bool = True) -> None:
        self.name = name
        self.with_plot = plot
        self._plot: DriftPlot | None = None  # remade only when the video's height changes

    def open(self) -> None:
        try:
            cv2.namedWindow(self.name, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as exc:  # e.g. opencv-python-headless, built without any GUI
            raise StartupError(f"{NO_DISPLAY} (OpenCV cannot open a window: {' '.join(str(exc).split())})") from None

    def show(self, video: np.ndarray, drift_history: dict[str, list[tuple[float, float]]], now: float) -> str | None:
        """Show the video (and the plot beside it); then why the person wants to stop, or None."""
        canvas = video
        if self.with_plot:
            size = layout.plot_size(video.shape[0])
            if self._plot is None or self._plot.size != size:
                self._plot = DriftPlot(*size)
            canvas = layout.side_by_side(video, self._plot.image(drift_history, now))
        cv2.imshow(self.name, canvas)
        key = cv2.waitKey(1)
        if key != -1 and (key & 0xFF) in QUIT_KEYS:
            return "quit key pressed"
        if self.closed():
            return "window closed"
        return None

    def closed(self) -> bool:
        try:
            return cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:  # the Qt build raises once the window is gone instead of answering 0
            return True

    def close(self) -> None:
        cv2.destroyAllWindows()
        cv2.waitKey(1)  # lets the GUI toolkit actually take the window down


def display_problem(environ, platform: str) -> str | None:
    """Why no window can open here, or None.

    On Linux OpenCV's Qt aborts the whole process (no exception) when it cannot reach the X
    server, so the viewer checks first that DISPLAY is set and its server answers. Done by
    hand because the check is one socket connection and no X library is a dependency.
    """
    if not platform.startswith("linux"):
        return None  # Windows and macOS sessions have a display; OpenCV raises if not
    display = environ.get("DISPLAY", "")
    if not display:
        return "DISPLAY is not set"
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return f"DISPLAY={display!r} is not of the form [host]:N"
    try:
        if host in ("", "unix"):
            _connect_unix(f"/tmp/.X11-unix/X{number}")
        else:
            socket.create_connection((host, 6000 + int(number)), timeout=2).close()
    except OSError as exc:
        return f"cannot reach the X server of DISPLAY={display}: {exc}"
    return None


def _connect_unix(path: str) -> None:
    # X servers on Linux listen on an abstract socket, a file socket, or both.
    last: OSError | None = None
    for address in ("\0" + path, path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(2)
            s.connect(address)
            return
        except OSError as exc:
            last = exc
        finally:
            s.close()
    raise last  # type: ignore[misc]
