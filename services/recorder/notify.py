"""Alerts and scene changes told to the world: MQTT (Home Assistant's conventions) and webhooks.

The recorder sees every record in order, once, and stores its events; as it does, it hands
each event (a scene change, a frozen feed, a blackout) and each stream's start and end to
the notifier. Every destination has an ``Outbox``: a thread of its own with a bounded queue,
so the pipeline never waits for a broker or a web server. A send that fails is retried with
backoff (doubling up to ``retry_max``, with jitter) until it goes or the recorder stops; a queue that
fills while a destination is down drops its oldest notices, counted. The database holds
every event whatever happens here (`encoders events` lists them).

MQTT (paho-mqtt), under ``ENCODERS_MQTT_PREFIX`` (``encoders``):

    encoders/status                  online / offline (retained; offline is the will)
    encoders/<stream>/state          online / offline (retained): the stream started, ended
    encoders/<stream>/<kind>         each event, JSON: stream, kind, time, seq, value, run
    encoders/<stream>/<kind>/thumbnail   its frame's small JPEG (raw bytes), just before it
    encoders/<stream>/event          the same with "event_type": what Home Assistant's event entity reads

and Home Assistant's MQTT discovery (retained, under ``homeassistant/``): per camera a
connectivity binary_sensor on its state topic and an event entity on its event topic, one
device per camera, so that Home Assistant shows each camera's sensors by itself.

Webhooks: each notice an HTTP POST of the same JSON to ``ENCODERS_WEBHOOK_URL``, with the
frame's JPEG as ``thumbnail_jpeg_base64`` when it has one.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from encoders.shared.backoff import Backoff
from encoders.shared.complaints import Complaints
from encoders.shared.masking import mask

log = logging.getLogger(__name__)
complain = Complaints(log, "the recorder's notifier counters")

# What Home Assistant's event entity may see; a trigger's kind is trigger:NAME.
ALERT_KINDS = ("scene_change", "frozen", "blackout", "trigger", "stream_down", "stream_back")
QUEUE_MAX = 10_000  # notices waiting for one destination; past it the oldest go, counted


@dataclass(frozen=True)
class Notice:
    """What happened: an event of a frame (kind in ALERT_KINDS), or a stream's state (online, offline)."""

    kind: str
    stream: str
    time: float  # the frame's capture time, or when the stream started or ended
    seq: int | None = None
    value: float | None = None  # the event's measure: drift, seconds frozen, contrast
    run: str = ""
    thumbnail: bytes | None = field(default=None, repr=False)  # the frame's small JPEG, when it has one

    @property
    def is_state(self) -> bool:
        return self.kind in ("online", "offline")

    def payload(self) -> dict[str, Any]:
        """The JSON of MQTT's event topics (the thumbnail goes on a topic of its own there)."""
        out = asdict(self)
        del out["thumbnail"]
        out["time"] = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return out


class Sink(Protocol):
    name: str

    def send(self, notice: Notice) -> None:
        """Deliver, or raise saying why not (the outbox retries)."""

    def close(self) -> None: ...


class Outbox:
    """One destination's thread and queue: notices go out in order, retried until they do."""

    def __init__(self, sink: Sink, *, retry_start: float = 0.5, retry_max: float = 30.0, max_queue: int = QUEUE_MAX):
        self.sink = sink
        self.retry_start, self.retry_max = retry_start, retry_max
        self.queue: queue.Queue[Notice] = queue.Queue(maxsize=max_queue)
        self.counters = {"sent": 0, "failures": 0, "dropped": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"notify-{sink.name}", daemon=True)
        self._thread.start()

    def put(self, notice: Notice) -> None:
        """Never waits: a full queue loses its oldest notice (counted)."""
        while True:
            try:
                self.queue.put_nowait(notice)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.counters["dropped"] += 1
                except queue.Empty:
                    pass

    def close(self, wait_s: float = 5.0) -> None:
        """Send what is queued for up to ``wait_s``, then stop (what is left is in the database)."""
        self.queue.put(Notice("", "", 0.0))  # wakes the thread; marks the end
        self._thread.join(wait_s)
        self._stop.set()
        self._thread.join(self.retry_max + 5)
        self.sink.close()

    def _loop(self) -> None:
        while True:
            notice = self.queue.get()
            if not notice.kind:
                return
            backoff = Backoff(self.retry_start, self.retry_max)
            while not self._stop.is_set():
                try:
                    self.sink.send(notice)
                    self.counters["sent"] += 1
                    break
                except Exception as exc:  # whatever a destination raises, the recorder goes on
                    self.counters["failures"] += 1
                    complain(f"{self.sink.name}_failures", "%s: could not send (%s); retrying", self.sink.name, exc)
                    if self._stop.wait(backoff.next()):
                        return


class Webhook:
    """An HTTP POST of each notice's JSON; a status other than 2xx is a failure (retried)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        import httpx

        self.name = "webhook"
        self.url = url
        self.client = httpx.Client(timeout=timeout_s)

    def send(self, notice: Notice) -> None:
        body = notice.payload()
        if notice.thumbnail:
            body["thumbnail_jpeg_base64"] = base64.b64encode(notice.thumbnail).decode()
        self.client.post(self.url, json=body).raise_for_status()

    def close(self) -> None:
        self.client.close()


class Mqtt:
    """paho-mqtt's client, reconnecting by itself; a notice while disconnected is a failure (retried)."""

    def __init__(self, url: str, prefix: str = "encoders", discovery: str = "homeassistant") -> None:
        import paho.mqtt.client as mqtt

        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"ENCODERS_MQTT_URL must be mqtt://[user:password@]host[:port]: {mask(url)!r}")
        self.name = "mqtt"
        self.prefix, self.discovery = prefix.strip("/"), discovery.strip("/")
        self.status = f"{self.prefix}/status"
        self.announced: set[str] = set()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"encoders-recorder-{id(self):x}")
        if parts.username:
            self.client.username_pw_set(parts.username, parts.password)
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.will_set(self.status, "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self.connected.clear()
        self.client.reconnect_delay_set(1, 30)
        self.client.connect_async(parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883))
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.warning("MQTT broker refused the connection: %s", reason)
            return
        client.publish(self.status, "online", qos=1, retain=True)
        self.announced.clear()  # a broker that restarted without persistence forgot the configs
        self.connected.set()
        log.info("MQTT: connected; publishing under %s/", self.prefix)

    def send(self, notice: Notice) -> None:
        if not self.connected.wait(2.0):
            raise ConnectionError("not connected to the MQTT broker")
        if notice.stream not in self.announced:
            self._announce(notice.stream)
        base = f"{self.prefix}/{notice.stream}"
        if notice.is_state:
            self._publish(f"{base}/state", notice.kind, retain=True)
            return
        body = notice.payload()
        if notice.thumbnail:  # first: whoever reacts to the event finds its picture there already
            self._publish(f"{base}/{notice.kind}/thumbnail", notice.thumbnail)
        self._publish(f"{base}/{notice.kind}", json.dumps(body))
        self._publish(f"{base}/event", json.dumps({"event_type": notice.kind.split(":")[0], **body}))

    def _announce(self, stream: str) -> None:
        """Home Assistant's MQTT discovery: the camera as a device with two entities (retained)."""
        device = {"identifiers": [f"encoders_{stream}"], "name": f"encoders {stream}", "manufacturer": "encoders"}
        uid = f"encoders_{stream}".replace(".", "_").replace("-", "_")
        common = {"availability_topic": self.status, "device": device}
        online = {
            "name": "online",
            "unique_id": f"{uid}_online",
            "state_topic": f"{self.prefix}/{stream}/state",
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            **common,
        }
        alert = {
            "name": "alert",
            "unique_id": f"{uid}_alert",
            "state_topic": f"{self.prefix}/{stream}/event",
            "event_types": list(ALERT_KINDS),
            **common,
        }
        self._publish(f"{self.discovery}/binary_sensor/{uid}/config", json.dumps(online), retain=True)
        self._publish(f"{self.discovery}/event/{uid}/config", json.dumps(alert), retain=True)
        self.announced.add(stream)

    def _publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5.0)
        if not info.is_published():
            raise ConnectionError(f"the broker did not take {topic}")

    def close(self) -> None:
        if self.connected.is_set():
            self.client.publish(self.status, "offline", qos=1, retain=True).wait_for_publish(2.0)
        self.client.disconnect()
        self.client.loop_stop()


class Notifier:
    """Every destination configured (none: notices go nowhere, at no cost)."""

    def __init__(self, outboxes: list[Outbox]) -> None:
        self.outboxes = outboxes

    @classmethod
    def from_config(cls, cfg: Any, **outbox: Any) -> Notifier:
        sinks: list[Sink] = []
        if cfg.mqtt_url:
            sinks.append(Mqtt(cfg.mqtt_url, cfg.mqtt_prefix, cfg.mqtt_discovery))
            log.info("alerts to MQTT at %s under %s/", mask(cfg.mqtt_url), cfg.mqtt_prefix)
        if cfg.webhook_url:
            sinks.append(Webhook(cfg.webhook_url))
            log.info("alerts to the webhook %s", mask(cfg.webhook_url))
        return cls([Outbox(sink, **outbox) for sink in sinks])

    def __call__(self, notice: Notice) -> None:
        for box in self.outboxes:
            box.put(notice)

    def counters(self) -> dict[str, int]:
        return {f"{b.sink.name}_{k}": v for b in self.outboxes for k, v in b.counters.items()}

    def close(self) -> None:
        for box in self.outboxes:
            box.close()


NoticeSink = Callable[[Notice], None]
