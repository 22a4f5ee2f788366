"""`encoders view` given only the core's address: a real viewer process asks a stand-in core
(tests/fake_core.py) where its publishers are, and subscribes to the test's own.

What the viewer does with what it receives is tested in test_viewer_web.py and test_viewer.py;
here, how it comes to receive it: the Welcome's publishers (a wildcard host replaced), the Bye,
a core that does not answer yet (waited for, said in the log and on the page), a stream's
restart on the metrics publisher.
"""

from __future__ import annotations

import time

import cv2
import httpx
import numpy as np
import pytest
import zmq

from encoders.services.viewer import layout
from encoders.services.viewer.subscriptions import core_lines
from encoders.services.viewer.web.thumbnails import make_thumbnail
from encoders.shared import zmqio
from encoders.shared.messages import Bye, Frame, Hello, MetricsRecord, Stats, StreamStart

from ..conftest import endpoint, free_port, wait_for
from ..fake_core import FakeCore


@pytest.fixture
def cores(sockets):
    """cores(endpoint, frames=..., metrics=...): stand-in cores naming those publishers, stopped at the end."""
    made: list[FakeCore] = []

    def start(at: str = "tcp://127.0.0.1:0", frames: str = "", metrics: str = "") -> FakeCore:
        made.append(FakeCore(sockets.bind(zmq.ROUTER, at), roles={"viewer"}, publishers=(frames, metrics)))
        return made[-1]

    yield start
    for core in made:
        core.close()


def picture(seq: int) -> bytes:
    img = np.zeros((120, 160, 3), np.uint8)
    img[:, :, 1] = np.linspace(0, 255, 160)[None, :]
    img[:, (seq * 7) % 140 : (seq * 7) % 140 + 20] = (0, 0, 255)
    ok, jpeg = cv2.imencode(".jpg", img)
    assert ok
    return jpeg.tobytes()


def record(seq: int, drift: float | None, *, scene: bool = False) -> MetricsRecord:
    return MetricsRecord(
        "cam0",
        seq,
        time.time(),
        time.time(),
        "w1",
        "m",
        None if drift is None else 1 - drift,
        drift,
        scene_change=scene,
        counts={"embedded": seq + 1},
        thumbnail=(make_thumbnail(picture(seq)) or b"") if scene else b"",
    )


def web_viewer(service, *args: str):
    port = free_port()
    viewer = service("view", *args, "--web", f"127.0.0.1:{port}", env={"DISPLAY": "", "ENCODERS_HEARTBEAT_S": "0.5"})
    wait_for(lambda: viewer.proc.poll() is not None or "web viewer on" in viewer.output(), 20, "the web server")
    assert viewer.proc.poll() is None, viewer.output()
    return viewer, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)


def test_the_viewer_subscribes_where_the_core_says_and_holds_no_session(service, publishers, cores):
    frames, metrics = publishers
    frames_port, metrics_port = (endpoint(p).rsplit(":", 1)[1] for p in publishers)
    # As a core that bound every interface names its publishers: the viewer connects to the
    # host it reached the core at instead.
    core = cores(frames=f"tcp://0.0.0.0:{frames_port}", metrics=f"tcp://*:{metrics_port}")
    viewer, http = web_viewer(service, "--core", core.endpoint)

    seq = 0

    def publish(n: int = 1, drift: float | None = 0.05, scene: bool = False) -> None:
        nonlocal seq
        for _ in range(n):
            zmqio.send(frames, Frame("cam0", seq, time.time(), 160, 120, picture(seq)), topic=True)
            zmqio.send(metrics, record(seq, drift, scene=scene), topic=True)
            seq += 1
        zmqio.send(frames, Stats("ingest", "cam0", {"published": seq, "fps": 15.0}), topic=True)

    def subscribed():
        publish()
        return http.get("/api/state").json()["streams"]

    wait_for(subscribed, 15, "the viewer to subscribe to the publishers the core named")
    out = viewer.output()
    assert f"publishes frames on tcp://127.0.0.1:{frames_port} and metrics on tcp://127.0.0.1:{metrics_port}" in out
    hello, bye = core.messages()[:2]
    assert isinstance(hello, Hello) and hello.role == "viewer" and isinstance(bye, Bye)
    assert http.get("/api/state").json()["waiting"] is None

    # A scene change, then the camera restarts: its drift history has a gap (a null) there.
    publish(3)
    publish(1, drift=0.4, scene=True)
    zmqio.send(metrics, StreamStart("cam0", first_seq=seq), topic=True)
    publish(1, drift=None)
    publish(3)
    drift = wait_for(lambda: [p for p in http.get("/api/drift").json()["cam0"] if p[1] is None], 5, "the gap")
    assert len(drift) == 1
    scene = wait_for(lambda: http.get("/api/scenes").json(), 5, "the scene change")[0]
    assert http.get(scene["thumbnail"]).content == make_thumbnail(picture(scene["seq"]))

    assert viewer.stop() == 0
    assert len(core.messages()) == 2, core.messages()  # nothing after the Bye: no session held


def test_a_core_that_does_not_answer_is_waited_for_and_named_until_it_does(service, publishers, cores):
    frames, metrics = publishers
    at = f"tcp://127.0.0.1:{free_port()}"
    viewer, http = web_viewer(service, "--core", at)
    # Within the heartbeat timeout (0.5 s x 3 here), the log says so, naming the address and the setting.
    wait_for(lambda: "no answer from the core" in viewer.output(), 10, "the log to say so")
    assert f"no answer from the core at {at} (ENCODERS_CORE) for 2 s" in viewer.output()
    assert at in http.get("/api/state").json()["waiting"]
    # The page's video is the window's placeholder, naming the core and the setting.
    with http.stream("GET", "/video.mjpg") as resp:
        buf = b""
        for chunk in resp.iter_bytes():
            buf += chunk
            if buf.count(b"--frame\r\n") >= 2:
                break
    jpeg = buf.split(b"--frame\r\n")[1].split(b"\r\n\r\n", 1)[1][:-2]
    shown = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert shown is not None
    assert np.abs(shown.astype(int) - layout.placeholder(core_lines(at))).mean() < 2

    # The core comes up at that address: the viewer's Hello (said again all along) is answered.
    core = cores(at, frames=endpoint(frames), metrics=endpoint(metrics))

    def subscribed():
        zmqio.send(frames, Frame("cam0", 0, time.time(), 160, 120, picture(0)), topic=True)
        return http.get("/api/state").json()["streams"]

    wait_for(subscribed, 15, "the viewer to subscribe once the core answered")
    assert http.get("/api/state").json()["waiting"] is None
    assert [type(m) for m in core.messages()][-2:] == [Hello, Bye]
    assert viewer.stop() == 0


def test_given_both_publishers_the_viewer_never_asks_the_core(service, publishers, cores):
    core = cores()
    frames, metrics = publishers
    viewer, http = web_viewer(
        service, "--core", core.endpoint, "--frames", endpoint(frames), "--metrics", endpoint(metrics)
    )

    def received():
        zmqio.send(frames, Frame("cam0", 0, time.time(), 160, 120, picture(0)), topic=True)
        return http.get("/api/state").json()["streams"]

    wait_for(received, 10, "a frame")
    assert viewer.stop() == 0
    assert core.messages() == [] and "asking the core" not in viewer.output()
