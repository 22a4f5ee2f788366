"""The recorder's loop against a core the test holds (a ROUTER over inproc), without a database or a process.

The real process, a real PostgreSQL and a fake core over TCP are in tests/integration/test_recorder.py;
here each step of the session is driven and looked at: Hello, Ready on every life, acks
after commit, Hello again with the run's name after a core restart, Stop.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TypeVar, cast

import numpy as np
import pytest
import zmq

from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.receiver import Receiver
from encoders.services.recorder.recording import assemble
from encoders.services.recorder.run import RecordedRun
from encoders.services.recorder.writer import Inline, writer_thread
from encoders.shared import zmqio
from encoders.shared.messages import (
    PROTOCOL,
    Ack,
    Acks,
    EndOfStream,
    Frame,
    Heartbeat,
    Hello,
    Message,
    MetricsRecord,
    NoPictures,
    Ready,
    Records,
    Refused,
    Stop,
    WantPictures,
    Welcome,
)
from encoders.shared.session import CoreSession, SessionRefused

from .test_recorder_streams import RunsTable
from .test_recorder_writer import GatedDatabase, SwitchableDatabase

CORE = "inproc://core"
M = TypeVar("M", bound=Message | Ack)


class Core:
    """The test's stand-in for the core's ROUTER."""

    def __init__(self, sockets) -> None:
        self.sock = sockets.bind(zmq.ROUTER, CORE)
        self.identity = b""
        self.acks: list[Acks] = []  # every Acks that came
        self.wants: list[WantPictures] = []  # every WantPictures that came
        # Answer each with its pictures, as the core hands the ingest's on (False: none; "gone": NoPictures).
        self.pictures: bool | str = True

    def expect(self, kind: type[M], receiver: Receiver, timeout: float = 5.0) -> M:
        """The next message of ``kind`` from the recorder (heartbeats passed over), stepping its loop
        meanwhile; ``Ack``: the one row of the next Acks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(10):
                msg, identity = zmqio.receive(self.sock, routed=True)
                self.identity = identity or self.identity
                if isinstance(msg, WantPictures):
                    self.wants.append(msg)
                    for seq in msg.seqs() if self.pictures is True else []:
                        self.send(picture(msg.stream, seq))
                    if self.pictures == "gone":
                        self.send(NoPictures.of(msg.stream, msg.seqs()))
                if isinstance(msg, Acks):
                    self.acks.append(msg)
                    if kind is Ack:
                        (row,) = msg.rows()
                        return cast(M, row)
                if isinstance(msg, kind):
                    return msg
            else:
                receiver.step()
        raise AssertionError(f"no {kind.__name__} from the recorder")

    def send(self, msg: Message) -> None:
        """A record goes as protocol 3 sends it: in a Records."""
        if isinstance(msg, MetricsRecord):
            msg = Records.of([msg])
        zmqio.send(self.sock, msg, prefix=[self.identity])


def record(seq: int, core: str) -> MetricsRecord:
    v = np.random.default_rng(seq).standard_normal(8).astype(np.float32)
    return MetricsRecord(
        stream="cam0",
        seq=seq,
        t_capture=100.0 + seq,
        t_encoded=100.0 + seq,
        worker="w",
        model="m",
        similarity=None,
        drift=None,
        counts={"embedded": seq + 1},
        core=core,
        vector=v / np.linalg.norm(v),
    )


def picture(stream: str, seq: int) -> Frame:
    return Frame(stream, seq, 100.0 + seq, 4, 4, b"\xff\xd8%s-%d\xff\xd9" % (stream.encode(), seq))


@pytest.fixture
def recorder(sockets, tmp_path):
    """(receiver, the database stand-in, the runs opened)."""
    db = SwitchableDatabase()
    cfg = RecorderConfig(db_batch=1, runs_dir=str(tmp_path), snapshot_wait=0.3)
    opened: list[str] = []

    def opener(named, keep_alive):
        opened.append(named)
        run = RecordedRun.claim(RunsTable(), runs_dir=tmp_path, run_dir=tmp_path / "run")
        return assemble(cfg, db, run, Inline())

    session = CoreSession(sockets.ctx, CORE, lambda: Hello("recorder", "x", PROTOCOL), heartbeat_s=0.2)
    sockets.adopt(session.sock)
    receiver = Receiver(session, opener, takeover=True)
    session.start(time.monotonic())
    yield receiver, db, opened
    if receiver.recording is not None:
        receiver.recording.close(0.1)
        receiver.recording.run.release()


def test_ready_acks_after_commit_a_new_life_and_stop(sockets, recorder):
    receiver, db, opened = recorder
    core = Core(sockets)
    hello = core.expect(Hello, receiver)
    assert (hello.role, hello.run, hello.takeover) == ("recorder", "", True)
    core.send(Welcome("core-1", 0.2, 3, run="old-run"))
    ready = core.expect(Ready, receiver)
    assert opened == ["old-run"] and ready.run == "run" and ready.stored == {}
    core.send(record(0, "core-1"))
    assert core.expect(Ack, receiver) == Ack("cam0", 0)  # committed at once (batches of one row)
    for seq in (1, 2):
        core.send(record(seq, "core-1"))
    assert core.expect(Ack, receiver) == Ack("cam0", 2) and db.seqs == [0, 1, 2]  # one ack covers both

    db.up = False  # rows now durable by going to the spool: acked all the same
    core.send(record(3, "core-1"))
    assert core.expect(Ack, receiver) == Ack("cam0", 3) and db.seqs == [0, 1, 2]
    db.up = True

    # The core restarted: it does not know the session. Hello again, naming the run; Ready with what is stored.
    core.send(Refused("unknown session", rejoin=True))
    hello = core.expect(Hello, receiver)
    assert (hello.run, hello.takeover) == ("run", False)
    core.send(Welcome("core-2", 0.2, 3))
    ready = core.expect(Ready, receiver)
    assert ready.stored == {"cam0": 3} and core.expect(Ack, receiver) == Ack("cam0", 3)
    assert opened == ["old-run"]  # the same run goes on
    core.send(record(3, "core-1"))  # sent again from the old core's spool: acknowledged, not written again
    assert core.expect(Ack, receiver) == Ack("cam0", 3)
    core.send(EndOfStream("cam0", 3, {"embedded": 4}))
    assert core.expect(Ack, receiver) == Ack("cam0", 3, ended=True)
    core.send(Stop("the pipeline stops"))
    deadline = time.monotonic() + 5
    while receiver.stopping is None and time.monotonic() < deadline:
        receiver.step()
    assert receiver.stopping == "the pipeline stops"
    assert receiver.recording is not None and receiver.recording.recorder.counters["repeated_records"] == 1


def test_a_recorder_the_core_refuses_raises_before_any_run_is_opened(sockets, recorder):
    receiver, _, opened = recorder
    core = Core(sockets)
    core.expect(Hello, receiver)
    core.send(Refused("a recorder is connected already"))
    with pytest.raises(SessionRefused, match="a recorder is connected already"):
        for _ in range(50):
            receiver.step()
    assert opened == [] and receiver.recording is None


def test_a_records_batch_is_taken_in_order_and_acknowledged_in_one_acks(sockets, recorder):
    receiver, db, _ = recorder
    core = Core(sockets)
    core.expect(Hello, receiver)
    core.send(Welcome("core-1", 0.2, 3))
    core.expect(Ready, receiver)
    batch = [record(seq, "core-1") for seq in range(4)]
    other = [dataclasses.replace(r, stream="cam1") for r in batch[:2]]
    core.send(Records.of(batch))
    core.send(Records.of(other))
    got: dict[str, tuple[int, bool]] = {}
    deadline = time.monotonic() + 5
    while got != {"cam0": (3, False), "cam1": (1, False)} and time.monotonic() < deadline:
        acks = core.expect(Acks, receiver)
        got.update({a.stream: (a.seq, a.ended) for a in acks.rows()})
    assert got == {"cam0": (3, False), "cam1": (1, False)}
    assert sorted(db.seqs) == [0, 0, 1, 1, 2, 3]
    assert all(len(a.streams) <= 2 for a in core.acks)


def spaced(seq: int) -> MetricsRecord:
    """A record of a frame captured 15 s after the one before: every other one is due a snapshot (30 s)."""
    return dataclasses.replace(record(seq, "core-1"), t_capture=100.0 + 15 * seq)


def acked_up_to(core: Core, receiver: Receiver, seq: int) -> None:
    """Until an Ack of cam0 up to ``seq`` (pictures that come in two turns make two acks)."""
    while (ack := core.expect(Ack, receiver)).seq < seq:
        pass
    assert ack == Ack("cam0", seq)


def test_snapshots_are_asked_for_on_the_session_and_written_when_the_picture_comes(sockets, recorder, tmp_path):
    """Every 30 s of capture time (records 15 s apart: 0, 2, 4...) and each scene change: asked for with one
    WantPictures per stream, the row naming the file once it is written; a picture that never comes is
    missed after snapshot_wait (0.3 s here), and its row goes without it."""
    receiver, db, _ = recorder
    core = Core(sockets)
    core.expect(Hello, receiver)
    core.send(Welcome("core-1", 0.2, 3))
    core.expect(Ready, receiver)
    batch = [spaced(seq) for seq in range(4)]
    batch[3].scene_change = True
    core.send(Records.of(batch))
    acked_up_to(core, receiver, 3)
    assert [w.seqs() for w in core.wants] == [[0, 2, 3]]  # one message for the batch: only what is due
    assert sorted(db.seqs) == [0, 1, 2, 3]
    snaps = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["frame_000000.jpg", "frame_000002.jpg", "scene_000003.jpg"]
    assert (snaps / "scene_000003.jpg").read_bytes() == picture("cam0", 3).jpeg

    core.pictures = False  # the ingest has forgotten them: nothing comes
    core.send(Records.of([spaced(4), spaced(5)]))
    acked_up_to(core, receiver, 5)  # once the wait is over
    assert core.wants[-1].seqs() == [4]
    recorder_ = receiver.recording
    assert recorder_ is not None and recorder_.recorder.counters["snapshots_missed"] == 1
    assert sorted(p.name for p in snaps.iterdir()) == ["frame_000000.jpg", "frame_000002.jpg", "scene_000003.jpg"]
    core.send(picture("cam0", 4))  # too late: dropped
    core.send(spaced(6))  # 6 is due: the missed snapshot passed to the next frame
    core.pictures = True
    acked_up_to(core, receiver, 6)
    assert core.wants[-1].seqs() == [6] and (snaps / "frame_000006.jpg").exists()
    assert recorder_.recorder.counters["pictures_unwanted"] == 1

    core.pictures = "gone"  # the ingest says it no longer has them: missed at once, not after the wait
    core.send(Records.of([spaced(7), spaced(8)]))
    acked_up_to(core, receiver, 8)
    assert core.wants[-1].seqs() == [8] and not (snaps / "frame_000008.jpg").exists()
    counters = recorder_.recorder.counters
    assert (counters["snapshots_missed"], counters["pictures_gone"]) == (2, 1)


def test_while_the_database_has_no_room_records_wait_unread_and_the_session_stays_alive(sockets, tmp_path):
    """A recorder catching up (a backlog, a slow database): its writer full, it reads no more records
    until the database takes a batch, and its loop goes on meanwhile: heartbeats to the core, and the
    core, whose records wait unread, not counted silent. Then every record is stored, in order, and acked."""
    db = GatedDatabase()  # holds every batch until the gate opens
    cfg = RecorderConfig(db_batch=2, runs_dir=str(tmp_path), snapshot_wait=0.3)  # full at 8 x 2 rows waiting

    def opener(named, keep_alive):
        run = RecordedRun.claim(RunsTable(), runs_dir=tmp_path, run_dir=tmp_path / "run")
        return assemble(cfg, db, run, writer_thread())

    session = CoreSession(sockets.ctx, CORE, lambda: Hello("recorder", "x", PROTOCOL), heartbeat_s=0.2)
    sockets.adopt(session.sock)
    receiver = Receiver(session, opener)
    session.start(time.monotonic())
    core = Core(sockets)
    core.expect(Hello, receiver)
    core.send(Welcome("core-1", 0.2, 3))
    core.expect(Ready, receiver)
    core.send(record(0, "core-1"))
    core.expect(WantPictures, receiver)  # the first record's snapshot: answered, so no row waits for it
    for first in range(1, 60, 4):
        core.send(Records.of([record(seq, "core-1") for seq in range(first, min(first + 4, 60))]))
    said: list[type] = []
    until = time.monotonic() + 2.0  # more than three times the session's timeout (0.6 s)
    while time.monotonic() < until:
        if core.sock.poll(0):
            said.append(type(zmqio.receive(core.sock, routed=True)[0]))
        else:
            receiver.step()
    recording = receiver.recording
    assert recording is not None and recording.writer.full
    taken = recording.recorder.counters["records"]
    assert taken <= 16 + 2 + 4, taken  # the rows it holds, the batch at the gate, one message's more
    assert session.sock.poll(0)  # the rest wait unread
    assert session.joined and session.lives == 1 and Hello not in said and said.count(Heartbeat) >= 5
    db.gate.set()
    acked_up_to(core, receiver, 59)
    assert db.seqs == list(range(60))
    recording.close(1.0)
    recording.run.release()
