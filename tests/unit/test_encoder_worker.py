"""The encoder's Worker against a stand-in core (a ROUTER the test holds, over inproc), with the tiny
real CLIP model: frames in, embeddings with thumbnails out, the capacity kept, lives kept apart."""

from __future__ import annotations

import functools
import io
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
import pytest
import zmq
from PIL import Image

from encoders.services.encoder.embedder import Embedder, NoModel, unit_vector
from encoders.services.encoder.model import load_encoder
from encoders.services.encoder.preprocess import picture_levels
from encoders.services.encoder.worker import Worker
from encoders.shared import zmqio
from encoders.shared.messages import (
    Admits,
    Bye,
    Embedding,
    Frame,
    Heartbeat,
    Hello,
    Message,
    Pictures,
    Refused,
    Results,
    Skipped,
    Stop,
    Welcome,
    Workers,
)
from encoders.shared.settings import CoreConnection

CORE = "inproc://core"


def jpeg(color, size=(80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def frame(seq: int, data: bytes | None = None) -> Frame:
    return Frame("cam0", seq, float(seq), 80, 60, jpeg((seq * 40 % 255, 0, 0)) if data is None else data)


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return load_encoder(tiny_model["ENCODERS_MODEL"], tiny_model["ENCODERS_PRETRAINED"], "cpu")


class Core:
    """The test's stand-in for the core's ROUTER: what the worker sent, heartbeats left out; and for
    an ingest: frames go to the worker's data socket (its Hello names it), as Pictures."""

    def __init__(self, sockets) -> None:
        self.sockets = sockets
        self.sock = sockets.bind(zmq.ROUTER, CORE)
        self.data: zmq.Socket | None = None  # a DEALER to the worker's data socket, once its Hello came
        self.identity = b""
        self.got: list[Message | Embedding | Skipped] = []  # a Results as its rows
        self.results: list[Results] = []  # the Results messages themselves

    def collect(self) -> list[Message | Embedding | Skipped]:
        while self.sock.poll(0):
            msg, identity = zmqio.receive(self.sock, routed=True)
            assert msg is not None and identity is not None
            self.identity = identity
            if isinstance(msg, Results):
                self.results.append(msg)
                self.got.extend(msg.rows())
            elif not isinstance(msg, Heartbeat):
                self.got.append(msg)
        return self.got

    def of(self, kind: type) -> list:
        return [m for m in self.collect() if isinstance(m, kind)]

    def outcomes(self) -> list:
        return [m for m in self.collect() if isinstance(m, Embedding | Skipped)]

    def send(self, *msgs: Message) -> None:
        """Messages to the worker: frames on its data socket (consecutive ones in one Pictures), the
        rest on its session. Two sockets keep no order between them: a test that needs a session
        message taken before later pictures waits for the worker to take it, then sends them."""
        frames: list[Frame] = []
        for msg in [*msgs, None]:
            if isinstance(msg, Frame):
                frames.append(msg)
                continue
            if frames:
                assert self.data is not None, "no data socket: no Hello came"
                zmqio.send(self.data, Pictures.of(frames[0].stream, frames))
                frames = []
            if msg is not None:
                zmqio.send(self.sock, msg, prefix=[self.identity])

    def hello(self) -> Hello:
        assert self.sock.poll(5000), "no Hello came"
        hellos = self.of(Hello)
        assert hellos
        if self.data is None:
            self.data = self.sockets.connect(zmq.DEALER, hellos[-1].data)
        return hellos[-1]


@pytest.fixture
def core(sockets):
    return Core(sockets)


@pytest.fixture
def make(sockets, encoder):
    made: list[Worker] = []

    def start(*, heartbeat_s: float = 60.0, embedder: Embedder | None = None, **kw) -> Worker:
        link = CoreConnection(core=CORE, heartbeat_s=heartbeat_s, heartbeat_misses=2)
        options = {"batch_size": 2, "batch_wait_ms": 0, "decode_threads": 1, **kw}
        worker = Worker("w", embedder or encoder, sockets.ctx, link, **options)
        sockets.adopt(worker.session.sock)
        sockets.adopt(worker.data.sock)
        made.append(worker)
        worker.start()
        return worker

    yield start
    for worker in made:
        worker.model.close()
        if worker.pool is not None:
            worker.pool.shutdown()


def until(worker: Worker, condition: Callable[[], object], timeout: float = 10.0, step=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        (step or worker.step)()


def joined(worker: Worker, core: Core) -> Hello:
    hello = core.hello()
    core.send(Welcome("core-1", 60.0, 2))
    until(worker, lambda: worker.session.joined, step=lambda: worker.receive(50))
    return hello


@pytest.mark.parametrize("decode_threads", [1, 2])
def test_frames_in_embeddings_with_thumbnails_out(core, make, encoder, decode_threads):
    worker = make(thumbnail_size=32, thumbnail_quality=80, decode_threads=decode_threads)
    hello = joined(worker, core)
    assert (hello.role, hello.name, hello.capacity, hello.model) == ("worker", "w", 4, encoder.name)
    corrupt = jpeg("red")[:200] + b"\0" * 300
    core.send(frame(0), frame(1, corrupt), frame(2, jpeg("blue", (640, 480))))
    until(worker, lambda: len(core.outcomes()) == 3)
    got = {m.seq: m for m in core.outcomes()}
    assert isinstance(got[1], Skipped) and "corrupt JPEG" in got[1].reason and got[1].worker == "w"
    for seq, size in ((0, (32, 24)), (2, (32, 24))):
        e = got[seq]
        assert isinstance(e, Embedding) and (e.stream, e.t_capture, e.worker, e.model) == (
            "cam0",
            seq,
            "w",
            encoder.name,
        )
        assert e.vector.shape == (64,) and np.linalg.norm(e.vector) == pytest.approx(1, abs=1e-5)
        thumb = Image.open(io.BytesIO(e.thumbnail))
        assert thumb.format == "JPEG" and thumb.size == size
    assert np.asarray(Image.open(io.BytesIO(got[2].thumbnail)).convert("RGB"))[..., 2].min() > 200  # its own picture
    assert worker.intake.held == 0 and worker.counters["embedded"] == 2 and worker.counters["skipped"] == 1


def test_without_a_model_frames_are_decoded_and_thumbnailed_and_each_vector_comes_from_its_jpeg(core, make):
    """ENCODERS_RUNTIME=none: everything a worker does but the model, the same way; a vector of
    --none-dim floats from a hash of the JPEG, the model named none/<dim>."""
    no_model = NoModel(dim=48)
    worker = make(embedder=no_model, thumbnail_size=32)
    hello = joined(worker, core)
    assert (hello.model, hello.dim) == ("none/48", 48)
    blue, red = jpeg("blue", (640, 480)), jpeg((200, 30, 30))
    corrupt = red[:200] + b"\0" * 300
    core.send(frame(0, blue), frame(1, corrupt), frame(2, red), frame(3, blue))
    until(worker, lambda: len(core.outcomes()) == 4)
    got = {m.seq: m for m in core.outcomes()}
    assert isinstance(got[1], Skipped) and "corrupt JPEG" in got[1].reason  # as with a model
    for seq, data in ((0, blue), (2, red), (3, blue)):
        e = got[seq]
        assert isinstance(e, Embedding) and e.model == "none/48"
        assert np.array_equal(e.vector, unit_vector(data, 48)) and np.linalg.norm(e.vector) == pytest.approx(1)
        assert (e.brightness, e.contrast) == pytest.approx(picture_levels(no_model.pre.load(data)))
        assert Image.open(io.BytesIO(e.thumbnail)).size == (32, 24)
    assert np.array_equal(got[0].vector, got[3].vector)  # the same JPEG, the same vector
    assert abs(float(got[0].vector @ got[2].vector)) < 0.5  # another JPEG, another vector
    assert worker.counters["embedded"] == 3 and worker.counters["skipped"] == 1


def test_without_a_model_and_without_decoding_no_picture_work_is_done_and_a_truncated_jpeg_still_skipped(core, make):
    """ENCODERS_NONE_DECODE=0 (main.py then makes no thumbnails): the vector from the JPEG's bytes,
    no levels; a JPEG without its end marker skipped as corrupt."""
    worker = make(embedder=NoModel(dim=48, decode=False), thumbnail_size=0)
    joined(worker, core)
    blue = jpeg("blue", (640, 480))
    core.send(frame(0, blue), frame(1, blue[:200] + b"\0" * 300), frame(2, blue + b"\0" * 8))
    until(worker, lambda: len(core.outcomes()) == 3)
    got = {m.seq: m for m in core.outcomes()}
    assert isinstance(got[1], Skipped) and "corrupt JPEG: not a whole JPEG" in got[1].reason
    for seq, data in ((0, blue), (2, blue + b"\0" * 8)):  # padding after the end marker: still a JPEG
        e = got[seq]
        assert isinstance(e, Embedding) and np.array_equal(e.vector, unit_vector(data, 48))
        assert (e.brightness, e.contrast, e.thumbnail) == (None, None, b"")


def test_no_thumbnail_when_they_are_off(core, make):
    worker = make(thumbnail_size=0)
    joined(worker, core)
    core.send(frame(0))
    until(worker, core.outcomes)
    (e,) = core.outcomes()
    assert isinstance(e, Embedding) and e.thumbnail == b""


def test_the_capacity_is_never_exceeded(core, make, caplog):
    worker = make()  # batches of 2: capacity 4
    joined(worker, core)
    core.send(*[frame(seq) for seq in range(5)])  # one more than offered: a core's mistake
    most = 0
    with caplog.at_level(logging.WARNING):
        while len(core.outcomes()) < 5:
            worker.step()
            most = max(most, worker.intake.held)
    assert most == 4
    (skipped,) = core.of(Skipped)
    assert skipped.seq == 4 and "over capacity" in skipped.reason
    assert "handed beyond the capacity of 4" in caplog.text
    assert len(core.of(Embedding)) == 4 and worker.intake.held == 0  # room again for 4


def test_a_silent_core_gets_what_was_held_given_up_and_a_new_hello(core, make, caplog):
    worker = make(heartbeat_s=0.1)  # gone after 0.2 s of silence
    core.hello()
    core.send(Welcome("core-1", 0.1, 2))
    until(worker, lambda: worker.session.joined, step=lambda: worker.receive(20))
    core.send(*[frame(seq) for seq in range(3)])
    until(worker, lambda: worker.intake.held == 3, step=lambda: worker.receive(20))
    hellos = len(core.of(Hello))
    with caplog.at_level(logging.WARNING):
        until(worker, lambda: not worker.session.joined, step=lambda: worker.receive(20))
    assert "gave up 3 frames held" in caplog.text
    assert worker.intake.held == 0 and len(worker.intake) == 0 and worker.counters["given_up"] == 3
    assert len(core.of(Hello)) == hellos + 1 and core.of(Hello)[-1].capacity == 4  # its full capacity again
    core.send(Welcome("core-1", 0.1, 2))
    until(worker, lambda: worker.session.joined, step=lambda: worker.receive(20))
    assert worker.intake.life == 2
    for _ in range(3):
        worker.step()
    assert not core.outcomes()  # nothing sent for the frames given up


def test_results_of_a_batch_from_an_ended_life_are_not_sent(core, make):
    worker = make()
    joined(worker, core)
    core.send(frame(0), frame(1))
    until(worker, lambda: len(worker.intake) == 2, step=lambda: worker.receive(50))
    worker.encode_next()  # the model has the batch
    core.send(Refused("unknown session", rejoin=True))  # the core restarted: a new life
    until(worker, lambda: not worker.session.joined, step=lambda: worker.receive(50))
    core.hello()
    core.send(Welcome("core-2", 60.0, 2))
    until(worker, lambda: worker.session.joined, step=lambda: worker.receive(50))
    core.send(frame(7))  # of the new life
    until(worker, lambda: core.outcomes() and worker.counters["discarded"] == 2)
    assert [m.seq for m in core.outcomes()] == [7]


def test_stop_from_the_core_finishes_what_is_held_then_bye(core, make):
    worker = make()
    joined(worker, core)
    core.send(*[frame(seq) for seq in range(4)])
    until(worker, lambda: worker.intake.held == 4, step=lambda: worker.receive(50))
    core.send(Stop("the pipeline is stopping"))
    until(worker, lambda: worker.stop_asked, step=lambda: worker.receive(50))
    core.send(frame(9))  # a frame after Stop: not taken
    until(worker, lambda: worker.counters["received"] == 5, step=lambda: worker.receive(50))
    worker.drain(limit_s=30)
    worker.close()
    assert sorted(m.seq for m in core.of(Embedding)) == [0, 1, 2, 3]
    assert worker.counters["not_taken"] == 1 and not worker.model.busy
    (bye,) = core.of(Bye)
    assert bye.reason == "the pipeline is stopping"
    assert isinstance(core.collect()[-1], Bye)  # after every result


def test_a_result_goes_out_as_soon_as_the_model_has_it(core, make):
    """The worker does not sit waiting for the next frame while a finished result waits
    (it waited up to 100 ms: most of the capture-to-embedding latency at 15 frames/s)."""
    worker = make()
    joined(worker, core)
    took = []

    def answered(seq: int) -> bool:
        return any(m.seq == seq for m in core.outcomes())

    for seq in range(5):
        core.send(frame(seq))
        sent = time.monotonic()
        until(worker, functools.partial(answered, seq))
        took.append(time.monotonic() - sent)
    assert statistics.median(took) < 0.06, took  # the tiny model takes a few ms


def test_a_finished_batch_wakes_the_worker_waiting_for_frames(core, make):
    """A batch the model finishes ends the worker's wait for input at once: its results are not held
    until a frame comes or the wait times out (it looked every 5 ms: up to 5 ms more a frame)."""
    worker = make()
    joined(worker, core)
    core.send(frame(0))
    until(worker, lambda: worker.model.busy, step=lambda: (worker.receive(50), worker.encode_next()))
    timeout_s = 60.0
    waited = time.monotonic()
    worker.receive(int(timeout_s * 1000))  # nothing comes from the core or an ingest: only the model's result ends it
    waited = time.monotonic() - waited
    # Not timed out (the tiny model's batch takes milliseconds): woken by the batch.
    assert waited < timeout_s / 2, f"the wait for input ran {waited:.1f} s: the finished batch did not wake it"
    worker.send_results(block_s=0.0)
    assert [m.seq for m in core.outcomes()] == [0]


def test_a_frame_that_comes_alone_is_not_held_to_fill_a_batch(core, make):
    """A camera's frame at its rate, on a worker with room: encoded at once, not after batch_wait_ms
    (here a minute) of waiting for frames that are not coming; the gap between pictures is measured
    as they come (a frame comes alone when it is at least batch_wait_ms)."""
    worker = make(batch_size=4, batch_wait_ms=60_000)
    joined(worker, core)
    core.send(frame(0))
    until(worker, core.outcomes, timeout=30)
    assert [r.n for r in core.results] == [1]
    time.sleep(0.3)  # the camera's pace
    core.send(frame(1))
    until(worker, lambda: len(worker.intake) == 1, step=lambda: worker.receive(100))
    assert 0.3 <= worker.picture_gap < 30  # since the picture before and the results of its batch


def test_frames_that_come_together_wait_to_fill_a_batch(core, make):
    """Pictures closer together than batch_wait_ms (here two in one message) wait for the rest of a
    batch: those that come during the wait go with them, in one batch."""
    worker = make(batch_size=4, batch_wait_ms=60_000)
    joined(worker, core)
    core.send(frame(0), frame(1))
    until(worker, lambda: len(worker.intake) == 2, step=lambda: worker.receive(100))
    core.send(frame(2), frame(3))  # waiting on the data socket while the worker gathers
    worker.encode_next()
    until(worker, lambda: len(core.outcomes()) == 4)
    assert [r.n for r in core.results] == [4]


SLOW_MODEL_S, WAIT_MS = 3.0, 2000  # a batch takes longer than the wait, with a second to spare either way


class SlowModel(NoModel):
    """A model that takes its time (here longer than the batch wait), as a saturated GPU's does."""

    def embed_frames(self, jpegs, arrays):
        time.sleep(SLOW_MODEL_S)  # the model's duration
        return super().embed_frames(jpegs, arrays)


def test_pictures_for_room_a_batch_freed_wait_to_fill_a_batch(core, make):
    """A saturated worker's next batch stays full: the pictures the core sends when a batch finishes
    come from several ingests, a message each, and the first is not alone, however long the batch
    took (it came more than batch_wait_ms after the picture before it, but not after the freed room)."""
    worker = make(batch_size=2, batch_wait_ms=WAIT_MS, embedder=SlowModel(dim=8, decode=False))
    joined(worker, core)
    core.send(frame(0))
    until(worker, core.outcomes, timeout=30)  # a batch of one, longer than the wait
    core.send(frame(1))  # at once: the freed room's picture
    until(worker, lambda: len(worker.intake) == 1, step=lambda: worker.receive(100))
    assert worker.picture_gap < WAIT_MS / 1000  # since the room, not since picture 0 (SLOW_MODEL_S before)
    core.send(frame(2))  # on its way while the worker gathers
    worker.encode_next()
    until(worker, lambda: len(core.outcomes()) == 3, timeout=30)
    assert [r.n for r in core.results] == [1, 2]


def test_a_batch_s_results_go_out_as_one_message(core, make):
    """Protocol 3: one Results per finished batch, the skips found meanwhile with it."""
    worker = make(batch_size=4)
    joined(worker, core)
    corrupt = jpeg("red")[:200] + b"\0" * 300
    core.send(frame(0), frame(1, corrupt), frame(2), frame(3))
    until(worker, lambda: len(core.outcomes()) == 4)
    assert [m.seq for m in core.outcomes()] == [1, 0, 2, 3]  # the skip was found first
    assert len(core.results) == 1 and core.results[0].n == 4 and core.results[0].vectors.shape == (3, 64)


def test_the_keys_the_core_names_are_admitted_then_answered_with_their_generation(core, make):
    """The core names a worker to an ingest only once the worker says its data socket admits the
    ingest's key (docs/PROTOCOL.md, "Keys on the data link"): Admits comes after the keys are set."""
    worker = make()
    joined(worker, core)
    key = "1" * 40
    core.send(Workers(admit={key: "ingest cam0"}, generation=5))
    until(worker, lambda: core.of(Admits), step=lambda: worker.receive(50))
    assert core.of(Admits) == [Admits(5)]
    assert worker.data.admitted.callback("data", key.encode()) is True
