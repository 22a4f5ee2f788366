"""The data link (docs/PROTOCOL.md, "Protocol 3"): pictures go from the ingest straight to their worker.
Real processes on real sockets (tests/integration/pipeline.py), workers without a model
(ENCODERS_RUNTIME=none), a real PostgreSQL.

- an ingest's link to a worker that breaks mid-batch: the pictures in flight never arrive; they are
  counted lost (at once, link_lost, or by the hold timeout), the rest go on, and the counts add up;
- a worker cut off (SIGSTOP) while it holds batches: its frames are lost within the heartbeat timeout,
  and nothing is embedded twice when it comes back;
- with keys, a stranger and a key of another role get nothing through a worker's data socket;
- with keys, a real-time ingest's first frames all reach their worker (no handshake refused meanwhile).
"""

from __future__ import annotations

import functools
import re
import signal
import socket
import threading
import time

import pytest
import zmq

from encoders.services.encoder.datalink import DATA_PORT
from encoders.shared import keys, zmqio
from encoders.shared.messages import Frame, FrameCounts, MetricsRecord, Pictures, rows_of

from ..conftest import Service, free_port, wait_for
from .pipeline import Pipeline, collect, subscribe, totals

MAX_WAIT = 2.0  # a frame held this long x 2 is given up: the tests' hold timeout (4 s)


class CuttableProxy:
    """A TCP forwarder between an ingest and a worker's data socket: ``hold()`` keeps what the ingest sends
    (not forwarded), ``cut()`` closes every connection, throwing away what was held: pictures lost mid-link."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target = free_port(), target_port
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.conns: list[socket.socket] = []
        self.holding = threading.Event()
        self.held = 0  # bytes thrown away
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_ingest: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_ingest and self.holding.is_set():
                    self.held += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def hold(self) -> None:
        self.holding.set()

    def cut(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.holding.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def adds_up(counts: FrameCounts) -> bool:
    return counts["published"] == counts["embedded"] + counts["dropped"] + counts["skipped"] + counts["lost"]


@pytest.mark.timeout(240)
def test_a_link_broken_mid_batch_costs_its_pictures_lost_and_the_rest_go_on(service, tmp_path, database, sockets):
    pipeline = Pipeline(service, {"ENCODERS_RUNTIME": "none"}, tmp_path, database, max_wait=MAX_WAIT)
    data_port = free_port()
    proxy = CuttableProxy(data_port)
    try:
        core = pipeline.start_core()
        pipeline.start_recorder()
        pipeline.start_worker(
            "w0",
            env={
                "ENCODERS_DATA_BIND": f"tcp://127.0.0.1:{data_port}",
                "ENCODERS_DATA_ADVERTISE": f"tcp://127.0.0.1:{proxy.port}",  # the ingests reach it through the proxy
            },
        )
        sub = subscribe(sockets, pipeline.metrics_pub)
        pipeline.start_ingest(0, pipeline.start_camera(0, fps=30), "--max-frames", "240")
        records = [m for m in collect(sub, records=30) if isinstance(m, MetricsRecord)]
        proxy.hold()  # pictures sent now go nowhere...
        wait_for(lambda: proxy.held > 0, 30, "pictures sent into the held link")
        proxy.cut()  # ... and the link breaks: ZeroMQ connects again, the next pictures arrive
        got = collect(sub, until_eos=1, timeout_s=150)
        records += [m for m in got if isinstance(m, MetricsRecord)]
        done = pipeline.stop()
    finally:
        proxy.close()
    counts = totals(done)["cam0"]
    assert proxy.held > 0, "nothing was in flight when the link broke"
    assert counts["lost"] >= 1 and counts["embedded"] > 30  # what was in flight, lost; the rest went on
    assert adds_up(counts), counts
    seqs = [r.seq for r in records]
    assert len(seqs) == len(set(seqs))  # nothing embedded twice
    said = core.output()
    assert "never reached worker" in said or "too long: given up" in said, said[-3000:]


@pytest.mark.timeout(240)
def test_a_worker_cut_off_holding_batches_costs_its_frames_and_nothing_is_embedded_twice(
    service, tmp_path, database, sockets
):
    pipeline = Pipeline(service, {"ENCODERS_RUNTIME": "none"}, tmp_path, database, max_wait=MAX_WAIT)
    core = pipeline.start_core()
    pipeline.start_recorder()
    w0 = pipeline.start_worker("w0")
    pipeline.start_worker("w1")
    sub = subscribe(sockets, pipeline.metrics_pub)
    pipeline.start_ingest(0, pipeline.start_camera(0, fps=30), "--max-frames", "300")
    records = [m for m in collect(sub, records=30) if isinstance(m, MetricsRecord)]
    w0.proc.send_signal(signal.SIGSTOP)  # holding what the core assigned it: cut off, silent
    try:
        started = time.monotonic()
        wait_for(lambda: "worker w0 left" in core.output(), 60, "the core to count w0 gone")
        gone_after = time.monotonic() - started
    finally:
        w0.proc.send_signal(signal.SIGCONT)
    got = collect(sub, until_eos=1, timeout_s=150)
    records += [m for m in got if isinstance(m, MetricsRecord)]
    done = pipeline.stop()
    counts = totals(done)["cam0"]
    assert gone_after < 30  # within the heartbeat timeout (3 s), a busy machine's margin aside
    assert adds_up(counts), counts
    assert counts["lost"] >= 1  # what w0 held
    seqs = [r.seq for r in records]
    assert len(seqs) == len(set(seqs)), "a frame was embedded twice"


@pytest.mark.timeout(240)
def test_with_keys_a_stranger_or_another_roles_key_gets_nothing_through_the_data_link(
    service, tmp_path, database, sockets
):
    """The worker's data socket admits only the ingest keys the core named: a stranger without keys, and the
    viewer's key (allowed by the core, in another role), fail the handshake; what they send never reaches
    the worker (no record of it), and the worker says it refused the viewer's key."""
    folder = str(tmp_path / "keys")
    keys.init(folder)
    pipeline = Pipeline(service, {"ENCODERS_RUNTIME": "none"}, tmp_path, database, env={"ENCODERS_KEYS": folder})
    pipeline.start_core("--no-recorder")
    worker = pipeline.start_worker("w0")
    viewer = keys.client(folder, "viewer")
    ingest = keys.client(folder, "ingest")
    assert viewer is not None and ingest is not None
    sub = subscribe(sockets, pipeline.metrics_pub, viewer)
    data = f"tcp://127.0.0.1:{DATA_PORT}"
    stranger = sockets.connect(zmq.DEALER, data)
    viewer_to_worker = keys.CurveKeys(viewer.public, viewer.secret, _worker_public(folder))
    other_role = sockets.connect(zmq.DEALER, data, curve=viewer_to_worker)
    forged = Pictures.of("cam0", [Frame("cam0", FORGED, time.time(), 2, 2, b"\xff\xd8forged")])
    for sock in (stranger, other_role):
        try:
            zmqio.send(sock, forged, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
    # Real time: the ingest is told the worker's link only once the worker admits its key (Admits), so its
    # first handshake is let in and none of its frames waits for a retry (at 10 fps a worker without a model
    # is never the bottleneck, even on a busy machine).
    pipeline.start_ingest(0, pipeline.start_camera(0, fps=10), "--max-frames", "20")
    got = collect(sub, until_eos=1)
    records = [m for m in got if isinstance(m, MetricsRecord)]
    assert FORGED not in {r.seq for r in records}  # the ingest's pictures, and only those
    wait_for(lambda: "refused a connection to the data socket" in worker.output(), 20, "the worker to say so")
    assert not stranger.poll(200) and not other_role.poll(200)  # nothing ever comes back to them
    done = pipeline.stop()
    counts = totals(done)["cam0"]
    assert adds_up(counts) and counts["embedded"] == len(records) == 20, counts


FORGED = 10**9  # a seq no camera of these tests reaches


def joined(core: Service, stream: str) -> int | None:
    """The seq a stream's ingest joined from, once the core says so in its log (None: not yet)."""
    said = re.search(rf"ingest \S+ joined: stream {stream} from (\d+)", core.output())
    return int(said.group(1)) if said else None


def has_joined(core: Service, stream: str) -> bool:
    return joined(core, stream) is not None


FIRST = 20  # frames of each camera of the keyed real-time test: its first
FIRST_FPS = 5  # slow enough that a worker without a model never makes a frame wait, on a busy 2-core machine
CAMERAS = 3  # each ingest's join is a chance for the race: three of them at once


@pytest.mark.timeout(180)
def test_with_keys_a_real_time_ingest_loses_none_of_its_first_frames_to_the_data_links_handshake(
    service, tmp_path, sockets
):
    """The keys race (docs/PROTOCOL.md, "Keys on the data link"): the core names a worker to an ingest only
    once the worker's data socket admits the ingest's key, so an ingest's first handshake is never refused
    (before, it could be, and ZeroMQ tried again 100 ms later while the worker held its first window and
    newer captures displaced the waiting ones: 3 and 10 of the first 20 frames at 30 fps dropped). Real
    time, not lossless: every one of each camera's first frames is embedded, in order, and the worker
    refused no handshake."""
    folder = str(tmp_path / "keys")
    keys.init(folder)
    pipeline = Pipeline(service, {"ENCODERS_RUNTIME": "none"}, tmp_path, "", env={"ENCODERS_KEYS": folder})
    core = pipeline.start_core("--no-recorder")
    # Its own data port (not 5560): another pipeline with keys on this machine must not matter here.
    worker = pipeline.start_worker("w0", env={"ENCODERS_DATA_BIND": f"tcp://*:{free_port()}"})
    viewer = keys.client(folder, "viewer")
    assert viewer is not None
    sub = subscribe(sockets, pipeline.metrics_pub, viewer)
    starts: dict[str, int] = {}
    for index in range(CAMERAS):
        # One after another, each once the one before has joined: an ingest's start (seconds of imports on a
        # busy 2-core machine) does not starve the others' first frames, each join is a chance for the race.
        pipeline.start_ingest(index, pipeline.start_camera(index, fps=FIRST_FPS), "--max-frames", str(FIRST))
        stream = f"cam{index}"
        wait_for(functools.partial(has_joined, core, stream), 60, f"{stream}'s ingest to join")
        starts[stream] = joined(core, stream) or 0
    got = collect(sub, until_eos=CAMERAS)
    assert "refused a connection to the data socket" not in worker.output(), worker.output()[-3000:]
    for stream, first in starts.items():
        seqs = [m.seq for m in got if isinstance(m, MetricsRecord) and m.stream == stream]
        assert seqs == list(range(first, first + FIRST)), (stream, seqs)  # none dropped, none lost
    done = pipeline.stop()
    for stream, counts in totals(done).items():
        assert adds_up(counts) and counts["embedded"] == FIRST and counts["dropped"] == counts["lost"] == 0, (
            stream,
            counts,
        )


def _worker_public(folder: str) -> bytes:
    pair = keys.client(folder, "worker")
    assert pair is not None
    return pair.public


AFTER = 15  # records of each stream the worker-last test reads once the worker embeds
WORKER_LAST_FRAMES = 200  # the cameras run past the worker's start and those records (40 s at 5 fps)


@pytest.mark.timeout(180)
def test_with_keys_a_worker_that_joins_streaming_ingests_loses_none_of_their_frames_to_the_handshake(
    service, tmp_path, sockets
):
    """The keys race, the other way round: the ingests stream (every capture dropped: no worker) when the
    worker joins; the core tells the worker their keys and them the worker's link. Only once the worker
    admits the keys are the ingests named the worker, so none of their handshakes is refused and, once a
    stream's first frame is embedded, none after it is dropped (before: a refused handshake held the
    worker's first window for ZeroMQ's retry while newer captures displaced the waiting ones)."""
    folder = str(tmp_path / "keys")
    keys.init(folder)
    pipeline = Pipeline(service, {"ENCODERS_RUNTIME": "none"}, tmp_path, "", env={"ENCODERS_KEYS": folder})
    core = pipeline.start_core("--no-recorder")
    viewer = keys.client(folder, "viewer")
    assert viewer is not None
    sub = subscribe(sockets, pipeline.metrics_pub, viewer)
    for index in range(CAMERAS):
        pipeline.start_ingest(
            index, pipeline.start_camera(index, fps=FIRST_FPS), "--max-frames", str(WORKER_LAST_FRAMES)
        )
    for index in range(CAMERAS):
        wait_for(functools.partial(has_joined, core, f"cam{index}"), 60, f"cam{index}'s ingest to join")
    worker = pipeline.start_worker("w0", env={"ENCODERS_DATA_BIND": f"tcp://*:{free_port()}"})
    seqs: dict[str, list[int]] = {f"cam{i}": [] for i in range(CAMERAS)}
    while min(len(s) for s in seqs.values()) < AFTER:
        assert sub.poll(60_000), f"fewer than {AFTER} records of each stream within 60 s: {seqs}"
        batch, _ = zmqio.receive(sub, topic=True)
        for m in rows_of(batch) if batch is not None else []:
            if isinstance(m, MetricsRecord):
                seqs[m.stream].append(m.seq)
    assert "refused a connection to the data socket" not in worker.output(), worker.output()[-3000:]
    for stream, embedded in seqs.items():
        assert embedded[:AFTER] == list(range(embedded[0], embedded[0] + AFTER)), (stream, embedded)
    done = pipeline.stop()
    assert all(adds_up(counts) for counts in totals(done).values()), done.stdout
