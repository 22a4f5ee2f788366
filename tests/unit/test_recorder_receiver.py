"""The recorder's loop against a core the test holds (a ROUTER over inproc), without a database or a process.

The real process, a real PostgreSQL and a fake core over TCP are in tests/integration/test_recorder.py;
here each step of the session is driven and looked at: Hello, Ready on every life, acks
after commit, Hello again with the run's name after a core restart, Stop.
"""

from __future__ import annotations

import time
from typing import TypeVar

import numpy as np
import pytest
import zmq

from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.receiver import Receiver
from encoders.services.recorder.recording import assemble
from encoders.services.recorder.run import RecordedRun
from encoders.services.recorder.writer import Inline
from encoders.shared import zmqio
from encoders.shared.messages import (
    PROTOCOL,
    Ack,
    EndOfStream,
    Hello,
    Message,
    MetricsRecord,
    Ready,
    Refused,
    Stop,
    Welcome,
)
from encoders.shared.session import CoreSession, SessionRefused

from .test_recorder_streams import RunsTable
from .test_recorder_writer import SwitchableDatabase

CORE = "inproc://core"
M = TypeVar("M", bound=Message)


class Core:
    """The test's stand-in for the core's ROUTER."""

    def __init__(self, sockets) -> None:
        self.sock = sockets.bind(zmq.ROUTER, CORE)
        self.identity = b""

    def expect(self, kind: type[M], receiver: Receiver, timeout: float = 5.0) -> M:
        """The next message of ``kind`` from the recorder (heartbeats passed over), stepping its loop meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(10):
                msg, identity = zmqio.receive(self.sock, routed=True)
                self.identity = identity or self.identity
                if isinstance(msg, kind):
                    return msg
            else:
                receiver.step()
        raise AssertionError(f"no {kind.__name__} from the recorder")

    def send(self, msg: Message) -> None:
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


@pytest.fixture
def recorder(sockets, tmp_path):
    """(receiver, the database stand-in, the runs opened)."""
    db = SwitchableDatabase()
    cfg = RecorderConfig(db_batch=1, runs_dir=str(tmp_path))
    opened: list[str] = []

    def opener(named, keep_alive):
        opened.append(named)
        run = RecordedRun.claim(RunsTable(), runs_dir=tmp_path, run_dir=tmp_path / "run")
        return assemble(cfg, db, run, Inline())

    session = CoreSession(sockets.ctx, CORE, lambda: Hello("recorder", "x", PROTOCOL), heartbeat_s=0.2)
    sockets.adopt(session.sock)
    receiver = Receiver(session, None, opener, takeover=True)
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
