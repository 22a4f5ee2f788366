"""Alerts to MQTT and webhooks (issue #15), against a real Mosquitto broker (started here) and a
real HTTP receiver: the recorder, fed records by a stand-in core, publishes each alert on its
stream's topics with Home Assistant's discovery and retained state, and POSTs it to a webhook
that was down when the alert happened, once it is up; the database has every alert regardless."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import paho.mqtt.client as mqtt
import pytest

from encoders.shared.messages import EndOfStream, StreamStart

from ..conftest import free_port, wait_for
from .recorder_helpers import RecorderProcess, make_frame, make_record

pytestmark = pytest.mark.mqtt

PICTURE = b"\xff\xd8" + bytes(300) + b"\xff\xd9"  # the frame's thumbnail, as a worker makes one


@pytest.fixture
def broker(tmp_path):
    """Mosquitto on a free port of the loopback; its port."""
    if shutil.which("mosquitto") is None:
        pytest.fail("this test needs a real MQTT broker: apt-get install mosquitto")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _listening(port), 10, "mosquitto to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Receiver:
    """An HTTP server that keeps every JSON body POSTed to it; started when the test says."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server: ThreadingHTTPServer | None = None
        self.handler = Handler

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class Subscriber:
    """A paho client on everything the recorder publishes: (topic, payload, retained) as they come."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, str, bool]] = []
        self.bytes: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe([("encoders/#", 1), ("homeassistant/#", 1)])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, m) -> None:
        self.bytes.append((m.topic, m.payload))
        self.seen.append((m.topic, m.payload.decode(errors="replace"), bool(m.retain)))

    def raw(self, topic: str) -> list[bytes]:
        return [p for t, p in self.bytes if t == topic]

    def payloads(self, topic: str) -> list[str]:
        return [p for t, p, _ in self.seen if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.timeout(120)
def test_alerts_go_to_mqtt_with_discovery_and_to_a_webhook_that_was_down(pg, tmp_path, broker, core):
    url = pg.new_database()
    hook, sub = Receiver(free_port()), Subscriber(broker)
    try:
        rec = RecorderProcess(
            tmp_path, core, url,
            "--mqtt-url", f"mqtt://127.0.0.1:{broker}", "--webhook-url", f"http://127.0.0.1:{hook.port}/hook",
            "--stream-down-after", "1.5",
        )  # fmt: skip
        core.wait_joined()
        core.deliver(StreamStart("cam0", 0, "http://camera"))
        records = [make_record("cam0", seq) for seq in range(6)]
        records[3] = dataclasses.replace(records[3], events={"frozen": 12.5}, thumbnail=PICTURE)
        records[4] = dataclasses.replace(records[4], scene_change=True)
        for r in records:
            core.frame(make_frame("cam0", r.seq))  # in the ingest's ring: a snapshot due is answered at once
            core.deliver(r)
        core.wait_acked("cam0", 5)

        wait_for(lambda: sub.payloads("encoders/cam0/frozen") and sub.payloads("encoders/cam0/scene_change"), 20,
                 "the alerts on MQTT")  # fmt: skip
        frozen = json.loads(sub.payloads("encoders/cam0/frozen")[0])
        assert (frozen["seq"], frozen["value"], frozen["stream"]) == (3, 12.5, "cam0") and frozen["run"]
        assert [json.loads(p)["event_type"] for p in sub.payloads("encoders/cam0/event")] == ["frozen", "scene_change"]
        assert sub.raw("encoders/cam0/frozen/thumbnail") == [PICTURE]  # the frame's picture, as the worker made it
        assert sub.payloads("encoders/cam0/state") == ["online"] and sub.payloads("encoders/status") == ["online"]
        # What Home Assistant (or anyone) connecting later finds: the retained discovery and state.
        late = Subscriber(broker)
        wait_for(lambda: len([m for m in late.seen if m[2]]) >= 4, 10, "the retained messages")
        late.close()
        assert ("encoders/cam0/state", "online", True) in late.seen and ("encoders/status", "online", True) in late.seen
        discovery = {t: json.loads(p) for t, p, retained in late.seen if t.startswith("homeassistant/") and retained}
        sensor = discovery["homeassistant/binary_sensor/encoders_cam0/config"]
        event = discovery["homeassistant/event/encoders_cam0/config"]
        assert sensor["state_topic"] == "encoders/cam0/state" and sensor["device_class"] == "connectivity"
        assert event["state_topic"] == "encoders/cam0/event" and "frozen" in event["event_types"]
        assert sensor["device"] == event["device"]  # one device per camera

        # No record for 1.5 s: the stream is said down, live (its records stopped: a camera stalled).
        wait_for(lambda: sub.payloads("encoders/cam0/stream_down"), 10, "stream_down")
        down = json.loads(sub.payloads("encoders/cam0/stream_down")[0])
        assert down["seq"] == 5 and down["value"] >= 1.5

        # The webhook was down all along: now up, the same alerts arrive, in order (retried).
        assert not hook.bodies
        hook.start()
        wait_for(lambda: {"frozen", "scene_change"} <= {b["kind"] for b in hook.bodies}, 40, "the webhook's POSTs")
        kinds = [b["kind"] for b in hook.bodies]
        sent = next(b for b in hook.bodies if b["kind"] == "frozen")
        assert base64.b64decode(sent["thumbnail_jpeg_base64"]) == PICTURE
        assert kinds.index("online") < kinds.index("frozen") < kinds.index("scene_change")

        core.deliver(EndOfStream("cam0", 5, {"published": 6, "embedded": 6, "dropped": 0, "skipped": 0, "lost": 0}))
        core.wait_acked("cam0", 5, ended=True)
        wait_for(lambda: "offline" in sub.payloads("encoders/cam0/state"), 20, "the stream's offline state")
        core.stop()
        assert rec.wait() == 0, rec.log()
        with pg.connect(url) as conn:
            stored = conn.execute("SELECT kind, seq, value FROM events").fetchall()
        assert sorted(stored)[0] == ("frozen", 3, 12.5) and [(k, q) for k, q, _ in sorted(stored)[1:]] == [
            ("stream_down", 5)
        ]  # the alert of the frame, and the stream that went down after frame 5, kept
        wait_for(lambda: "offline" in sub.payloads("encoders/status"), 10, "the recorder to say it went")
    finally:
        sub.close()
        hook.close()


@pytest.mark.timeout(240)
def test_the_whole_pipeline_tells_mqtt_of_scene_cuts_and_of_a_camera_that_stops_and_comes_back(
    service, tiny_model, tmp_path, broker, pg
):
    """pisim's scene cuts are scene changes on MQTT; stopping pisim is stream_down (live, from the
    recorder), restarting it stream_back (the core's, on the first frame after the gap), stored too."""
    from .pipeline import Pipeline

    url = pg.new_database()
    pipeline = Pipeline(service, tiny_model, tmp_path, url, env={"ENCODERS_STREAM_DOWN_AFTER": "2"})
    sub = Subscriber(broker)
    try:
        pipeline.start_core()
        pipeline.start_recorder("--mqtt-url", f"mqtt://127.0.0.1:{broker}")
        pipeline.start_worker("w0")
        port = free_port()
        camera = ["pisim", "--port", str(port), "--fps", "10", "--width", "320", "--height", "240",
                  "--scene-every", "1"]  # fmt: skip
        pisim = service(*camera)
        pipeline.start_ingest(0, f"http://127.0.0.1:{port}/stream.mjpg", "--reconnect-max", "0.5")
        wait_for(lambda: len(sub.payloads("encoders/cam0/scene_change")) >= 2, 60, "scene changes on MQTT")
        assert pisim.stop() == 0  # the camera goes away
        wait_for(lambda: sub.payloads("encoders/cam0/stream_down"), 30, "stream_down on MQTT")
        assert not sub.payloads("encoders/cam0/stream_back")
        service(*camera)  # and comes back on the same address
        wait_for(lambda: sub.payloads("encoders/cam0/stream_back"), 60, "stream_back on MQTT")
        back = json.loads(sub.payloads("encoders/cam0/stream_back")[0])
        assert back["value"] >= 2.0
        done = pipeline.stop()
        assert done.returncode == 0, done.stderr
        assert pipeline.run_dir is not None
        with pg.connect(url) as conn:
            kinds = {k for (k,) in conn.execute(
                "SELECT e.kind FROM events e JOIN runs r ON r.id = e.run_id WHERE r.name = %s", (pipeline.run_dir.name,)
            )}  # fmt: skip
            scenes = conn.execute("SELECT count(*) FROM scene_changes").fetchone()
        assert "stream_back" in kinds and scenes is not None and scenes[0] >= 2
    finally:
        sub.close()
