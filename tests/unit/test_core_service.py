"""The core (service.py) on inproc sockets, its peers DEALER sockets of the test, its clock the test's.

Each test says Hello as a role would, sends what that role sends, steps the core at chosen
times and reads what the core sent each peer and published.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zmq

from encoders.services.metrics.config import MetricsConfig
from encoders.services.metrics.delivery import Delivery
from encoders.services.metrics.numbering import Numbering
from encoders.services.metrics.service import Core
from encoders.shared import zmqio
from encoders.shared.messages import (
    PROTOCOL,
    Ack,
    Acks,
    Admits,
    Assigned,
    Assignment,
    Bye,
    Captured,
    CaptureEnded,
    CaptureNote,
    Credit,
    Draining,
    Embedding,
    EndOfStream,
    Frame,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    NoPictures,
    Pictures,
    Preview,
    Ready,
    Records,
    Refused,
    Results,
    Skipped,
    Stats,
    Stop,
    Stopped,
    StreamStart,
    WantPictures,
    Welcome,
    Workers,
    rows_of,
)

from ..conftest import Sockets
from ..fake_core import Capture

_names = itertools.count()


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def drain(sock: zmq.Socket, *, topic: bool = False, wait_ms: int = 30) -> list[Message]:
    """What came, a Records as its records (rows_of)."""
    out: list[Message] = []
    while sock.poll(wait_ms):
        msg, _ = zmqio.receive(sock, topic=topic)
        assert msg is not None
        out.extend(rows_of(msg))
    return out


_ids = itertools.count(1)
CAPTURES: dict[int, Capture] = {}  # what each capture a test sent was, by the id it went under


def wire(msg: Message | Embedding | Skipped | Ack | Capture) -> Message:
    """A row as protocol 3 sends it: a worker's result in a Results, an ack in an Acks; a capture (which
    the tests make as protocol 2's Capture) as an ingest announces it, a Captured of one row."""
    if isinstance(msg, Embedding | Skipped):
        return Results.of([msg])
    if isinstance(msg, Ack):
        return Acks.of([msg])
    if isinstance(msg, Capture):
        i = next(_ids)
        CAPTURES[i] = msg
        return Captured.of([CaptureNote(i, msg.t_capture, len(msg.jpeg), msg.width, msg.height)])
    return msg


class Peer:
    """A session's DEALER, as a service would open it (without shared/session.py's bookkeeping).

    Protocol 3: the core tells an ingest which worker embeds each capture (``Assigned``), and the
    ingest sends the picture there; here the rig stands in for those data links. What an ingest
    peer got is what the core sent it, but its Assigned and Workers, which the rig keeps: a
    worker peer's ``got`` has, after what the core sent it (but Workers), the frames assigned to
    it, as the Frames its data socket would have taken."""

    def __init__(self, sockets: Sockets, endpoint: str, name: str, rig: Rig | None = None) -> None:
        self.name, self.rig = name, rig
        self.identity = f"{name}-{next(_names)}".encode()
        self.sock = sockets.connect(zmq.DEALER, endpoint, identity=self.identity)
        self.unread: list[Message] = []  # what the core sent it that the rig read meanwhile

    def send(self, *msgs: Message | Embedding | Skipped | Ack | Capture) -> None:
        for msg in msgs:
            zmqio.send(self.sock, wire(msg))

    def got(self, *, heartbeats: bool = False) -> list[Message]:
        out, self.unread = [*self.unread, *drain(self.sock)], []
        out = [m for m in out if heartbeats or not isinstance(m, Heartbeat)]
        if self.rig is None:
            return out
        out = self.rig.data_links(self, out)
        if self.rig.core.links.number(self.identity):
            self.rig.take_assigned()
            out += self.rig.pictures.pop(self.rig.core.links.number(self.identity), [])
        return out


class Rig:
    def __init__(self, sockets: Sockets, tmp_path, **settings) -> None:
        tag = next(_names)
        eps = {k: f"inproc://{k}-{tag}" for k in ("core", "frames", "metrics")}
        self.core_ep = eps["core"]
        defaults = {"heartbeat_s": 1.0, "heartbeat_misses": 3, "max_wait": 5.0, "state_dir": str(tmp_path)}
        self.cfg = MetricsConfig(**{**defaults, **settings})
        router = sockets.bind(zmq.ROUTER, eps["core"])
        frames = sockets.bind(zmq.XPUB, eps["frames"])
        metrics = sockets.bind(zmq.PUB, eps["metrics"])
        delivery = Delivery(tmp_path / "records.spool", self.cfg.hold_records) if self.cfg.recorder else None
        numbering = Numbering(tmp_path / "numbering.json")
        self.core = Core(
            self.cfg,
            router,
            frames,
            metrics,
            numbering,
            delivery,
            publishers=("tcp://*:5555", "tcp://*:5558"),
            life="L1",
        )
        self.frames = sockets.connect(zmq.SUB, eps["frames"], subscribe=[b""])
        self.metrics = sockets.connect(zmq.SUB, eps["metrics"], subscribe=[b""])
        self.sockets = sockets
        self.ingests: list[Peer] = []
        self.pictures: dict[int, list[Message]] = {}  # worker number -> the frames assigned to it, not yet read
        self.assignments: list[tuple[str, Assignment]] = []  # every decision, in order (stream, row)
        self.previews: dict[str, float] = {}  # stream -> the Preview rate its ingest was last told

    def data_links(self, peer: Peer, got: list[Message]) -> list[Message]:
        """What a peer got but the rig's share (an ingest's Assigned, Workers and Preview: kept here)."""
        out = []
        for m in got:
            if isinstance(m, Assigned):
                stream = peer.name.removeprefix("ingest-")
                for row in m.rows():
                    self.assignments.append((stream, row))
                    if row.worker:
                        c = CAPTURES[row.id]
                        frame = Frame(stream, row.seq, c.t_capture, c.width, c.height, c.jpeg)
                        self.pictures.setdefault(row.worker, []).append(frame)
            elif isinstance(m, Preview):
                self.previews[peer.name.removeprefix("ingest-")] = m.fps
            elif not isinstance(m, Workers):
                out.append(m)
        return out

    def take_assigned(self) -> None:
        """Every ingest's Assigned so far read (into ``pictures``), what else they got kept for them."""
        for ingest in self.ingests:
            ingest.unread.extend(self.data_links(ingest, drain(ingest.sock, wait_ms=1)))

    def peer(self, name: str, hello: Hello | None, now: float = 0.0) -> Peer:
        p = Peer(self.sockets, self.core_ep, name, self)
        if hello is not None:
            p.send(hello)
            self.step(now)
        return p

    def ingest(self, stream: str = "cam0", now: float = 0.0, **kw) -> Peer:
        p = self.peer(f"ingest-{stream}", None)
        self.ingests.append(p)
        p.send(Hello("ingest", f"ingest-{stream}", PROTOCOL, stream=stream, **kw))
        self.step(now)
        return p

    def worker(self, name: str = "w", capacity: int = 2, now: float = 0.0) -> Peer:
        return self.peer(name, Hello("worker", name, PROTOCOL, capacity=capacity, model="m", dim=2), now)

    def step(self, now: float) -> None:
        self.core.router.poll(30)
        self.core.step(now)

    def published(self) -> list[Message]:
        return drain(self.metrics, topic=True)

    def records(self) -> list[Message]:
        return [m for m in self.published() if not isinstance(m, Stats)]


@pytest.fixture
def rig(sockets, tmp_path) -> Rig:
    return Rig(sockets, tmp_path)


def capture(t: float = 1.0) -> Capture:
    return Capture(t, 2, 2, b"jpeg")


def embedding(f: Frame, vector=(1.0, 0.0)) -> Embedding:
    return Embedding(f.stream, f.seq, f.t_capture, "w", "m", vector=unit(*vector), thumbnail=b"thumb")


def test_each_role_is_welcomed_with_what_it_needs(rig):
    ingest = rig.ingest(lossless=True)
    (welcome,) = ingest.got()
    assert isinstance(welcome, Welcome)
    assert (welcome.core, welcome.heartbeat_s, welcome.misses, welcome.credit) == ("L1", 1.0, 3, 4)
    assert (welcome.frames, welcome.metrics) == ("", "")
    for role in ("viewer", "recorder", "control"):
        (w,) = rig.peer(role, Hello(role, role, PROTOCOL)).got()
        assert isinstance(w, Welcome) and w.core == "L1"
        if role != "control":
            assert (w.frames, w.metrics) == ("tcp://*:5555", "tcp://*:5558")
    (w,) = rig.worker().got()
    assert isinstance(w, Welcome)


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (Hello("worker", "w", PROTOCOL + 1, capacity=2), f"speaks protocol {PROTOCOL}"),
        (Hello("ingest", "i", PROTOCOL), "names no stream"),
        (Hello("worker", "w", PROTOCOL, capacity=0), "offers no capacity"),
    ],
)
def test_a_hello_the_core_cannot_take_is_refused_for_good(rig, hello, reason):
    (refused,) = rig.peer("p", hello).got()
    assert isinstance(refused, Refused) and reason in refused.reason and not (refused.retry or refused.rejoin)


def test_streams_past_the_limit_are_refused_for_now_and_counted(sockets, tmp_path):
    rig = Rig(sockets, tmp_path, max_streams=1)
    rig.ingest("cam0")
    (refused,) = rig.ingest("cam1").got()
    assert isinstance(refused, Refused) and refused.retry and "1 streams already" in refused.reason
    assert rig.core.ingests.streams_refused == 1


def test_one_recorder_a_second_refused_unless_it_takes_over(rig):
    first = rig.peer("rec1", Hello("recorder", "rec1", PROTOCOL))
    first.got()
    second = rig.peer("rec2", Hello("recorder", "rec2", PROTOCOL))
    (refused,) = second.got()
    # At first it may be the one restarted after rec1 died: it tries again, a session timeout (3 s) at most.
    assert isinstance(refused, Refused) and "rec1" in refused.reason and refused.retry
    for t in (1.0, 2.0, 3.0):
        first.send(Heartbeat())  # rec1 is alive
        rig.step(t)
    second.send(Hello("recorder", "rec2", PROTOCOL))
    rig.step(3.0)
    (refused,) = second.got()
    assert isinstance(refused, Refused) and "rec1" in refused.reason and "--takeover" in refused.reason
    assert not refused.retry  # a second recorder beside a live one: refused for good
    third = rig.peer("rec3", Hello("recorder", "rec3", PROTOCOL, takeover=True), now=3.1)
    assert isinstance(third.got()[0], Welcome)
    (bye,) = first.got()
    assert isinstance(bye, Bye) and bye.reason == "taken over"


def test_a_recorder_started_again_at_once_waits_for_its_predecessor_to_count_as_gone(rig):
    """Killed and started again at once, a recorder says Hello before the dead one has been silent
    two heartbeats: it tries again, and joins once the dead one counts as gone."""
    rig.peer("rec1", Hello("recorder", "rec1", PROTOCOL)).got()  # then killed: never heard again
    again = rig.peer("rec2", Hello("recorder", "rec2", PROTOCOL), now=0.5)
    (refused,) = again.got()
    assert isinstance(refused, Refused) and refused.retry
    rig.step(3.2)  # past the heartbeat timeout: rec1 is gone
    again.send(Hello("recorder", "rec2", PROTOCOL))
    rig.step(3.5)
    assert isinstance(again.got()[0], Welcome)


def test_a_recorder_whose_predecessor_went_silent_is_asked_to_try_again(rig):
    """The recorder restarted after a crash says Hello before the core counts the dead one
    gone: it waits and tries again, rather than exit."""
    rig.peer("rec1", Hello("recorder", "rec1", PROTOCOL)).got()
    (refused,) = rig.peer("rec2", Hello("recorder", "rec2", PROTOCOL), now=2.5).got()  # unheard for 2.5 heartbeats
    assert isinstance(refused, Refused) and refused.retry and "silent" in refused.reason
    rig.step(3.5)  # past the heartbeat timeout: rec1 is gone
    again = rig.peer("rec2b", Hello("recorder", "rec2", PROTOCOL), now=3.6)
    assert isinstance(again.got()[0], Welcome)


def test_a_recorder_unheard_for_a_heartbeat_and_more_is_not_silent(rig):
    """A healthy recorder is regularly unheard for a little over a heartbeat (it says something at
    least once a heartbeat, give or take its loop's turns): a second recorder is not told it has
    been silent, as if the first had crashed (it waits its session timeout at most, as any second
    recorder does: test_one_recorder_a_second_refused_unless_it_takes_over)."""
    rig.peer("rec1", Hello("recorder", "rec1", PROTOCOL)).got()
    (refused,) = rig.peer("rec2", Hello("recorder", "rec2", PROTOCOL), now=1.9).got()
    assert isinstance(refused, Refused) and "rec1" in refused.reason and "silent" not in refused.reason


def test_without_a_recorder_a_recorder_is_refused(sockets, tmp_path):
    rig = Rig(sockets, tmp_path, recorder=False)
    (refused,) = rig.peer("rec", Hello("recorder", "rec", PROTOCOL)).got()
    assert isinstance(refused, Refused) and "--no-recorder" in refused.reason


def test_a_session_the_core_does_not_know_is_asked_to_rejoin(rig):
    stranger = rig.peer("stranger", None)
    stranger.send(Heartbeat())
    rig.step(0)
    (refused,) = stranger.got()
    assert isinstance(refused, Refused) and refused.rejoin
    stranger.send(Bye())  # a Bye needs no answer
    rig.step(0)
    assert stranger.got() == []


def test_heartbeats_to_every_peer_and_silent_peers_expire(rig):
    worker = rig.worker(now=0.0)
    worker.got()
    rig.step(1.1)
    assert [type(m) for m in worker.got(heartbeats=True)] == [Heartbeat]
    rig.step(3.2)
    assert rig.core.broker.workers == {}  # silent for 3 s: gone


def test_frames_are_numbered_assigned_previewed_and_records_go_out_in_order(rig):
    ingest = rig.ingest()
    worker = rig.worker(capacity=2)
    ingest.got(), worker.got()
    ingest.send(capture(1.0), capture(2.0), capture(3.0))
    rig.step(0.1)
    assert rig.previews == {"cam0": rig.cfg.preview_fps}  # the rig's frames SUB watches every stream
    assert drain(rig.frames, topic=True) == []  # the core holds no picture: previews come from the ingest
    preview = Frame("cam0", 1, 2.0, 2, 2, b"jpeg")
    ingest.send(Pictures.of("cam0", [preview], preview=True))
    rig.step(0.15)
    assert drain(rig.frames, topic=True) == [preview]
    got = worker.got()
    assert [(stream, row.seq, row.worker) for stream, row in rig.assignments] == [("cam0", 0, 1), ("cam0", 1, 1)]
    assert [m.seq for m in got] == [0, 1]  # capacity 2: the third waits
    # One batch's rows in any order (outcomes of one stream and worker come in seq order batch by batch:
    # a later batch's outcome for a seq past one still held says that picture never came, link_lost).
    worker.send(Results.of([embedding(got[1], (0, 1)), embedding(got[0])]))
    rig.step(0.2)
    (third,) = worker.got()
    worker.send(embedding(third, (0, 1)))
    rig.step(0.3)
    out = rig.records()
    assert [type(m).__name__ for m in out] == ["StreamStart", "MetricsRecord", "MetricsRecord", "MetricsRecord"]
    recs = [m for m in out if isinstance(m, MetricsRecord)]
    assert [(r.seq, r.similarity) for r in recs] == [(0, None), (1, pytest.approx(0.0)), (2, pytest.approx(1.0))]
    assert recs[0].core == "L1" and recs[0].thumbnail == b"thumb" and recs[2].counts["embedded"] == 3


def test_real_time_keeps_the_newest_frame_and_counts_the_displaced_dropped(rig):
    ingest = rig.ingest()
    ingest.send(capture(1.0), capture(2.0), capture(3.0))  # no worker yet: one waits, the newest
    rig.step(0.1)
    worker = rig.worker(capacity=4, now=0.2)
    (_, frame) = worker.got()
    assert isinstance(frame, Frame) and frame.seq == 2
    assert rig.core.streams.totals("cam0")["dropped"] == 2
    worker.send(Skipped("cam0", 2, "w", "corrupt JPEG"))
    rig.step(0.3)
    totals = rig.core.streams.totals("cam0")
    assert (totals["dropped"], totals["skipped"], totals["published"]) == (2, 1, 3)


def test_a_result_from_a_worker_not_holding_the_frame_is_dropped_and_counted(rig):
    ingest = rig.ingest()
    honest, other = rig.worker("honest", capacity=1), rig.worker("other", capacity=1)
    ingest.send(capture())
    rig.step(0.1)
    holder, stranger = (honest, other) if honest.got()[1:] else (other, honest)
    stranger.got()
    stranger.send(Embedding("cam0", 0, 1.0, "x", "m", vector=unit(1, 0)))
    rig.step(0.2)
    assert rig.core.complain.counts["unexpected_results"] == 1
    assert rig.core.streams.totals("cam0")["embedded"] == 0
    holder.send(Embedding("cam0", 0, 1.0, "w", "m", vector=unit(1, 0)))
    rig.step(0.3)
    assert rig.core.streams.totals("cam0")["embedded"] == 1


def test_the_first_workers_model_and_length_are_the_pipelines_and_another_is_refused(rig):
    """Issue #22: one worker's 3-float vector made the database vector(3) and every later record
    was refused. The pipeline's model and length are fixed before any vector: by the first Hello."""
    (w,) = rig.worker("first").got()
    assert isinstance(w, Welcome)
    for name, model, dim in [("other-model", "ViT-L-14/openai", 2), ("other-length", "m", 3)]:
        (refused,) = rig.peer(name, Hello("worker", name, PROTOCOL, capacity=2, model=model, dim=dim)).got()
        assert isinstance(refused, Refused) and not (refused.retry or refused.rejoin)
        assert "m (2 floats)" in refused.reason and f"({dim} floats)" in refused.reason
    (silent,) = rig.peer("unsaid", Hello("worker", "unsaid", PROTOCOL, capacity=2, model="m")).got()
    assert isinstance(silent, Refused) and "no embedding length" in silent.reason


def test_the_settings_fix_the_model_before_any_worker(sockets, tmp_path):
    rig = Rig(sockets, tmp_path, pipeline_model="ViT-B-32/openai", pipeline_dim=512)
    (refused,) = rig.worker("w").got()  # model "m", 2 floats
    assert isinstance(refused, Refused) and "ENCODERS_PIPELINE_MODEL" in refused.reason
    ok = Hello("worker", "w2", PROTOCOL, capacity=2, model="ViT-B-32/openai", dim=512)
    assert isinstance(rig.peer("w2", ok).got()[0], Welcome)


def test_a_result_of_another_length_is_skipped_counted_and_its_worker_let_go(rig):
    ingest = rig.ingest(lossless=True)
    worker = rig.worker("liar", capacity=2)
    ingest.send(capture(0.0), capture(1.0))
    rig.step(0.1)
    frames = [m for m in worker.got() if isinstance(m, Frame)]
    assert len(frames) == 2
    worker.send(Embedding("cam0", frames[0].seq, 0.0, "liar", "m", vector=unit(1, 0, 0)))  # said 2 floats
    rig.step(0.2)
    (told,) = [m for m in worker.got() if isinstance(m, Refused)]
    assert "3 floats" in told.reason and not told.rejoin
    assert rig.core.model.refused_results == {"liar": 1}
    ingest.send(CaptureEnded("camera closed"), Bye())
    rig.step(0.3)
    eos = rig.records()[-1]
    assert isinstance(eos, EndOfStream)
    counts = {k: eos.counts[k] for k in ("published", "embedded", "skipped", "lost")}
    assert counts == {"published": 2, "embedded": 0, "skipped": 1, "lost": 1}  # the other frame went with it


def test_a_worker_that_leaves_or_goes_silent_loses_its_frames_at_once(rig):
    ingest = rig.ingest(lossless=True)
    a, b = rig.worker("a", capacity=2), rig.worker("b", capacity=2)
    ingest.send(*[capture(float(t)) for t in range(4)])
    rig.step(0.1)
    frames_a = [m for m in a.got() if isinstance(m, Frame)]
    frames_b = [m for m in b.got() if isinstance(m, Frame)]
    assert len(frames_a) == len(frames_b) == 2
    a.send(*[embedding(f) for f in frames_a])
    b.send(Bye("crashing"))
    rig.step(0.2)
    ingest.send(CaptureEnded("camera closed"), Bye())
    rig.step(0.3)  # no max_wait: its frames were lost when it left
    eos = rig.records()[-1]
    assert isinstance(eos, EndOfStream) and eos.last_seq == 3
    assert {k: eos.counts[k] for k in ("published", "embedded", "lost")} == {"published": 4, "embedded": 2, "lost": 2}


def test_a_lossless_ingest_gets_credit_as_its_frames_leave_the_queue(rig):
    ingest = rig.ingest(lossless=True)
    (welcome,) = ingest.got()
    assert welcome.credit == 4  # no worker: a few frames, then the camera waits
    ingest.send(*[capture(float(t)) for t in range(4)])
    rig.step(0.1)
    assert ingest.got() == []  # its queue is full: no credit
    worker = rig.worker(capacity=8, now=0.2)
    frames = [m for m in worker.got() if isinstance(m, Frame)]
    assert len(frames) == 4
    rig.step(0.3)
    credits = ingest.got()
    assert credits and all(isinstance(c, Credit) for c in credits)
    assert sum(c.n for c in credits) == 8  # the workers' capacity, queue empty


def test_credit_is_granted_a_quarter_of_the_limit_at_a_time_not_a_frame_at_a_time(rig):
    ingest = rig.ingest(lossless=True)
    worker = rig.worker(capacity=32, now=0.1)  # the lossless limit: 32 frames queued or granted
    got = ingest.got()
    assert [m.credit for m in got if isinstance(m, Welcome)] == [4]
    assert sum(c.n for c in got if isinstance(c, Credit)) == 28  # up to the limit
    held: list[Frame] = []
    for t in range(12):  # frames come and leave one by one: credit comes back in eights, not one by one
        ingest.send(capture(float(t)))
        rig.step(0.2 + t / 100)
        held += [m for m in worker.got() if isinstance(m, Frame)]
        worker.send(*[embedding(f) for f in held])
        held.clear()
        rig.step(0.205 + t / 100)
    credits = [c for c in ingest.got() if isinstance(c, Credit)]
    assert [c.n for c in credits] == [8]  # 12 captures used 12 of the 32: one Credit of 8 at the 8th


def test_a_second_ingest_of_a_stream_replaces_the_first_which_is_refused(rig):
    first = rig.ingest()
    first.got()
    first.send(capture())
    rig.step(0.1)
    second = rig.ingest(now=0.2)
    assert isinstance(second.got()[0], Welcome)
    (refused,) = first.got()
    assert isinstance(refused, Refused) and not (refused.rejoin or refused.retry)
    # The old epoch's frame waited for a worker: its picture went with its ingest (dropped).
    assert rig.core.streams.totals("cam0")["dropped"] == 1
    worker = rig.worker(now=0.3)
    assert [type(m) for m in worker.got()] == [Welcome]
    second.send(capture())
    rig.step(0.4)
    out = rig.records()
    assert [type(m).__name__ for m in out] == ["StreamStart", "EndOfStream", "StreamStart"]
    assert out[2].first_seq == 1


def test_ingest_stats_are_republished_with_the_cores_view(rig):
    ingest = rig.ingest()
    rig.worker(capacity=3)
    ingest.send(Stats("ingest", "cam0", {"fps": 4.0, "published": 10}))
    rig.step(0.1)
    (stats,) = [m for m in drain(rig.frames, topic=True) if isinstance(m, Stats)]
    assert stats.service == "ingest" and stats.counters["fps"] == 4.0 and stats.counters["published"] == 10
    assert (stats.counters["workers"], stats.counters["workers_free"]) == (1, 3)


def test_the_cores_stats_every_second_per_stream(rig):
    rig.ingest()
    rig.worker(capacity=3)
    rig.step(1.5)
    stats = [m for m in rig.published() if isinstance(m, Stats)]
    assert stats and stats[-1].service == "metrics" and stats[-1].stream == "cam0"
    c = stats[-1].counters
    assert (c["published"], c["workers"], c["capacity"], c["sessions_ingest"], c["records_held"]) == (0, 1, 3, 1, 1)


def test_the_recorder_gets_records_after_ready_its_run_is_remembered_and_its_floor_raised(rig):
    ingest = rig.ingest()
    worker = rig.worker()
    rec = rig.peer("rec", Hello("recorder", "rec", PROTOCOL))
    rec.got()
    rec.send(Ready("run-7", {"cam0": 99}))
    rig.step(0.1)
    assert [type(m) for m in rec.got()] == [StreamStart]  # held since the ingest's Hello
    ingest.send(capture())
    rig.step(0.2)
    (frame,) = [m for m in worker.got() if isinstance(m, Frame)]
    assert frame.seq == 100  # above what the recorder stored
    worker.send(embedding(frame))
    rig.step(0.3)
    (record,) = rec.got()
    assert isinstance(record, MetricsRecord) and record.seq == 100
    rec.send(Ack("cam0", 100))
    rig.step(0.4)
    assert rig.core.delivery is not None and rig.core.delivery.settled
    rec.send(Bye())
    rig.step(0.5)
    (welcome,) = rig.peer("rec2", Hello("recorder", "rec2", PROTOCOL), now=0.6).got()
    assert isinstance(welcome, Welcome) and welcome.run == "run-7"


def test_a_control_stop_drains_then_answers_stopped_with_totals_that_add_up(rig):
    ingest = rig.ingest()
    worker = rig.worker(capacity=1)
    rec = rig.peer("rec", Hello("recorder", "rec", PROTOCOL))
    rec.send(Ready("run-1", {}))
    control = rig.peer("ctl", Hello("control", "ctl", PROTOCOL))
    for p in (ingest, worker, rec, control):
        p.got()
    ingest.send(capture(1.0), capture(2.0), capture(3.0))
    rig.step(0.1)
    control.send(Stop("done"))
    rig.step(0.2)
    assert [type(m) for m in ingest.got()] == [Stop]
    # The one who asked hears at once what the drain waits for (then every few seconds: encoders stop says it).
    (draining,) = control.got()
    assert isinstance(draining, Draining) and draining.waiting_for.startswith("the capture of cam0 to end"), draining
    ingest.send(CaptureEnded("told to stop"), Bye())
    (frame,) = [m for m in worker.got() if isinstance(m, Frame)]
    worker.send(embedding(frame))
    rig.step(0.3)
    # The frame that waited for room went with its ingest (protocol 3: the picture is the ingest's): dropped, or
    # lost if it was assigned in the turn its ingest left (the ingest never heard whose it was).
    assert [m for m in worker.got() if isinstance(m, Frame)] == []
    rig.step(0.4)
    assert not rig.core.done  # the recorder has not acknowledged
    records = rec.got()
    assert isinstance(records[-1], EndOfStream)
    rec.send(Ack("cam0", records[-1].last_seq, ended=True))
    rig.step(0.5)
    assert [type(m) for m in worker.got()] == [Stop] and [type(m) for m in rec.got()] == [Stop]
    (stopped,) = control.got()
    assert isinstance(stopped, Stopped)
    c = stopped.streams["cam0"]
    assert c["published"] == 3 and c["embedded"] + c["dropped"] + c["skipped"] + c["lost"] == 3
    # Viewers hold no session: the same totals reach them on the metrics publisher (topic stopped/).
    (published,) = [m for m in rig.published() if isinstance(m, Stopped)]
    assert published.streams == stopped.streams
    # It exits once those it told have said Bye (their connections read to the end).
    for p in (worker, rec):
        p.send(Bye())
    rig.step(0.6)
    assert not rig.core.done
    control.send(Bye())
    rig.step(0.7)
    assert rig.core.done


def test_a_signals_drain_ends_at_its_time_limit(rig):
    ingest = rig.ingest()
    worker = rig.worker(capacity=1)
    ingest.send(capture())
    rig.step(0.1)
    rig.core.begin_drain(0.2, "a signal", limit_s=2.0)
    rig.step(0.3)  # the ingest says nothing, the worker never answers
    assert not rig.core.done
    rig.step(2.3)
    totals = rig.core.streams.totals("cam0")
    assert (totals["published"], totals["lost"]) == (1, 1)
    assert [type(m) for m in worker.got() if not isinstance(m, Frame)][-1] is Stop
    assert not [m for m in rig.published() if isinstance(m, Stopped)]  # a signal (a restart?): viewers wait
    rig.step(2.4)
    assert not rig.core.done  # the worker it told to Stop may still say Bye
    rig.step(5.4)
    assert rig.core.done  # it did not: a heartbeat timeout later the core goes all the same


def test_captures_an_ingest_sent_that_never_arrived_are_counted_lost(rig):
    """Its session expired (a partition): the captures queued in the dead connection never
    arrived. Its next Hello says how many it sent in that session; the rest are lost."""
    ingest = rig.ingest()
    ingest.got()
    ingest.send(*[capture(float(t)) for t in range(3)])
    rig.step(0.1)
    rig.step(10.0)  # silent for longer than the heartbeats: gone, its epoch ends
    again = Hello("ingest", "ingest-cam0", PROTOCOL, stream="cam0", undelivered=2, sent=5, after="L1")
    ingest.send(again)
    rig.step(10.1)
    totals = rig.core.streams.totals("cam0")
    # 3 numbered (real time, no worker: the 2 older displaced, the newest dropped when its session ended: its
    # picture was the ingest's), 2 sent that never arrived, 2 read while away.
    assert (totals["published"], totals["dropped"], totals["lost"]) == (7, 5, 2)


def test_a_hello_after_another_life_of_the_core_is_passed_on_to_the_recorder(rig):
    ingest = rig.peer("ingest-cam0", Hello("ingest", "i", PROTOCOL, stream="cam0", sent=40, after="L0"))
    assert isinstance(ingest.got()[0], Welcome)
    rig.step(0.1)
    (start,) = [m for m in rig.records() if isinstance(m, StreamStart)]
    assert (start.previous_core, start.previous_sent) == ("L0", 40)
    assert rig.core.streams.totals("cam0")["lost"] == 0  # only the recorder can tell what L0 accounted for


def test_one_results_of_n_rows_files_n_outcomes_with_one_dispatch_and_one_records_out(rig):
    """Protocol 3: a worker's batch is one message; the core checks and files each row, lets the
    freed room out once, and publishes the stream's run of records as one Records."""
    ingest = rig.ingest(lossless=True)
    worker = rig.worker(capacity=4)
    ingest.got(), worker.got()
    ingest.send(*[capture(float(t)) for t in range(1, 5)])
    rig.step(0.1)
    frames = [m for m in worker.got() if isinstance(m, Frame)]
    assert len(frames) == 4
    rows: list[Embedding | Skipped] = [embedding(f, (1, i)) for i, f in enumerate(frames[:3])]
    rows.append(Skipped("cam0", frames[3].seq, "w", "bad"))
    dispatches: list[float] = []
    dispatch = rig.core.workers._dispatch

    def counted(now: float) -> None:
        dispatches.append(now)
        dispatch(now)

    rig.core.workers._dispatch = counted
    zmqio.send(worker.sock, Results.of(rows))
    drain(rig.metrics, topic=True)  # what was published before (the stream's start)
    rig.step(0.2)
    assert dispatches == [0.2, 0.2]  # one for the Results, one of the loop's turn (not one per row)
    totals = rig.core.streams.totals("cam0")
    assert (totals["embedded"], totals["skipped"]) == (3, 1)
    batches = []
    while rig.metrics.poll(30):
        msg, _ = zmqio.receive(rig.metrics, topic=True)
        batches.append(msg)
    (records,) = [m for m in batches if isinstance(m, Records)]
    assert [r.seq for r in records.rows()] == [f.seq for f in frames[:3]]


# -- protocol 3, the data link: Workers to the ingests, link_lost ----------------------------------------------


def test_ingests_are_told_each_workers_data_address_when_workers_come_and_go(rig):
    ingest = rig.ingest()
    ingest.got()
    hello = Hello("worker", "a", PROTOCOL, capacity=2, model="m", dim=2, data="ipc:///tmp/a-data")
    a = rig.peer("a", hello, now=0.1)
    advertised = Hello("worker", "b", PROTOCOL, capacity=2, model="m", dim=2, data="tcp://gpu1:5560", advertised=True)
    rig.peer("b", advertised, now=0.2)
    told = [m for m in drain(ingest.sock) if isinstance(m, Workers)]
    assert told[-1].links == {"1": {"address": "ipc:///tmp/a-data", "key": ""}, "2": {"address": "tcp://gpu1:5560",
                                                                                     "key": ""}}  # fmt: skip
    a.send(Bye("stopping"))
    rig.step(0.3)
    (after,) = [m for m in drain(ingest.sock) if isinstance(m, Workers)]
    assert after.links == {"2": {"address": "tcp://gpu1:5560", "key": ""}}  # a link to a worker gone: closed


class FakeKey:
    """What the core keeps of a key ZAP let a session in with (keys.py's Allowed): its z85 and name."""

    def __init__(self, key: bytes, name: str) -> None:
        self.key, self.name = key, name


def test_with_keys_an_ingest_hears_of_a_worker_and_is_given_it_only_once_it_admits_the_ingests_key(rig, monkeypatch):
    """The keys race (docs/PROTOCOL.md, "Keys on the data link"): the ingest's handshake must not reach
    the worker before its key does, so the core waits for the worker's Admits of a generation that
    holds the key before it names the worker to the ingest or gives the worker its captures."""
    keys = {"ingest-cam0": b"1" * 40, "w": b"w" * 40}
    monkeypatch.setattr(rig.core.doors, "check", lambda hello, via: (FakeKey(keys[hello.name], hello.name), None))
    worker = rig.worker(capacity=4)
    ingest = rig.ingest(now=0.1)
    (admit,) = [m for m in drain(worker.sock) if isinstance(m, Workers)][-1:]
    assert admit.admit == {"1" * 40: "ingest-cam0"} and admit.generation == 1
    assert [m.links for m in drain(ingest.sock) if isinstance(m, Workers)] == [{}]  # not reachable yet
    ingest.send(capture(1.0))
    rig.step(0.2)
    assert rig.core.broker.queued("cam0") == 1 and rig.core.broker.in_use == 0  # waits for the worker's Admits
    assert not [m for m in drain(ingest.sock) if isinstance(m, Assigned | Workers)]
    worker.send(Admits(0))  # an answer to an older list: nothing changes
    rig.step(0.3)
    assert rig.core.broker.queued("cam0") == 1
    worker.send(Admits(1))
    rig.step(0.4)
    told = [m for m in drain(ingest.sock) if isinstance(m, Assigned | Workers)]
    link, assigned = told
    assert isinstance(link, Workers) and isinstance(assigned, Assigned)  # the link first, then the capture's worker
    assert link.links == {"1": {"address": "", "key": "w" * 40}}
    assert [(a.seq, a.worker) for a in assigned.rows()] == [(0, 1)]
    worker.send(Admits(7))  # a generation never sent: counted, nothing else
    rig.step(0.5)
    assert rig.core.complain.counts["bad_admits"] == 1


def test_an_outcome_past_a_seq_its_worker_still_holds_loses_that_seq_at_once(rig):
    """Pictures of one link arrive in order, and a worker answers in the order they came: an answer
    for seq 2 while 0 and 1 are still held says their pictures never came (the link broke)."""
    ingest = rig.ingest(lossless=True)
    worker = rig.worker(capacity=4)
    ingest.got(), worker.got()
    ingest.send(*[capture(float(t)) for t in range(4)])
    rig.step(0.1)
    frames = [m for m in worker.got() if isinstance(m, Frame)]
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    worker.send(Skipped("cam0", 1, "w", "corrupt"))  # a skip says nothing of order (found while decoding)
    rig.step(0.2)
    assert rig.core.counters["link_lost"] == 0
    worker.send(embedding(frames[2]))
    rig.step(0.3)
    assert rig.core.counters["link_lost"] == 1  # seq 0: lost at once, not after max_wait
    worker.send(embedding(frames[3]))
    ingest.send(CaptureEnded("done"), Bye())
    rig.step(0.4)
    totals = rig.core.streams.totals("cam0")
    assert {k: totals[k] for k in ("published", "embedded", "skipped", "lost")} == {
        "published": 4, "embedded": 2, "skipped": 1, "lost": 1}  # fmt: skip


def test_a_stream_watched_on_the_frames_publisher_gets_previews_asked_of_its_ingest(sockets, tmp_path):
    rig = Rig(sockets, tmp_path, preview_fps=5.0)
    rig.frames.setsockopt(zmq.UNSUBSCRIBE, b"")  # nobody watches
    ingest = rig.ingest()
    ingest.got()
    rig.step(0.1)
    assert rig.previews == {}
    rig.frames.setsockopt(zmq.SUBSCRIBE, b"frame/cam0")
    rig.step(0.2)
    ingest.got()
    assert rig.previews == {"cam0": 5.0}
    rig.frames.setsockopt(zmq.UNSUBSCRIBE, b"frame/cam0")
    rig.step(0.3)
    ingest.got()
    assert rig.previews == {"cam0": 0.0}


def test_pictures_the_recorder_wants_are_asked_of_the_ingest_and_handed_to_the_recorder(rig):
    ingest = rig.ingest()
    rec = rig.peer("rec", Hello("recorder", "rec", PROTOCOL))
    ingest.got(), rec.got()
    rec.send(WantPictures.of("cam0", [3, 4]))
    rig.step(0.1)
    (asked,) = [m for m in ingest.got() if isinstance(m, WantPictures)]
    assert asked.seqs() == [3, 4]
    picture = Frame("cam0", 4, 1.0, 2, 2, b"jpeg4")  # 3 left the ingest's ring: a snapshot missed
    ingest.send(Pictures.of("cam0", [picture]))
    ingest.send(NoPictures.of("cam0", [3]))  # which the ingest says, for the recorder not to wait
    rig.step(0.2)
    got = rec.got()
    assert [m for m in got if isinstance(m, Frame)] == [picture]
    assert [m.seqs() for m in got if isinstance(m, NoPictures)] == [[3]]
    assert drain(rig.frames, topic=True) == []  # not a preview: not published


def test_pictures_of_a_stream_whose_ingest_is_gone_are_said_gone_at_once(rig):
    rec = rig.peer("rec", Hello("recorder", "rec", PROTOCOL))
    rec.got()
    rec.send(WantPictures.of("cam9", [5, 6]))  # no ingest of cam9 (ended, or never came)
    rig.step(0.1)
    assert [(m.stream, m.seqs()) for m in rec.got() if isinstance(m, NoPictures)] == [("cam9", [5, 6])]
    assert rig.core.complain.counts["pictures_unavailable"] == 1
