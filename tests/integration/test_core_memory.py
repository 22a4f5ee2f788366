"""The core's memory against what anyone who reaches its sockets can send or withhold (issue #22):
a msgpack bomb of a header, and a subscriber that never reads its frames. Each against a real
core process, its memory read from /proc as it runs."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from encoders.shared import zmqio
from encoders.shared.messages import PROTOCOL, Frame, Heartbeat, Hello, Pictures, Refused, Stats, Welcome

from ..conftest import Sockets
from .pipeline import Pipeline

MB = 2**20


def peak_rss(pid: int) -> int:
    """The most memory the process has held at once since it started (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc (not Linux?)")


def join(sockets: Sockets, core: str, hello: Hello) -> zmq.Socket:
    sock = sockets.connect(zmq.DEALER, core)
    zmqio.send(sock, hello)
    assert sock.poll(10_000), "no answer to Hello"
    assert isinstance(zmqio.receive(sock)[0], Welcome)
    return sock


def nested_maps(width: int, depth: int) -> bytes:
    inner: dict = {}
    for _ in range(depth):
        inner = {f"{i:x}": inner for i in range(width)}
    return msgpack.packb(inner)


@pytest.mark.timeout(180)
def test_msgpack_bombs_cost_the_core_neither_its_memory_nor_its_sessions(service, tmp_path, sockets):
    """Issue #22: a 60 MB "array of empty arrays" took the core to 4.5 GB and blocked its loop
    for 46 s, and every session expired. The header's bounds refuse it on its length, and a
    header within them costs a bounded memory; the core goes on answering, and counts each."""
    # Frames (so message parts) of up to 64 MB, as a pipeline of large pictures may allow: the
    # 60 MB header then passes ZeroMQ's bound and reaches the decoder, which must refuse it.
    pipeline = Pipeline(service, {}, tmp_path, "", env={"ENCODERS_MAX_FRAME_BYTES": str(64 * MB)})
    core = pipeline.start_core("--no-recorder")
    stats = sockets.connect(zmq.SUB, pipeline.metrics_pub, subscribe=[b"stats/cam0"])
    live = join(sockets, pipeline.core, Hello("ingest", "cam", PROTOCOL, stream="cam0"))
    rss_before = psutil.Process(core.proc.pid).memory_info().rss

    bombs = [
        b"\xdd" + (60 * MB).to_bytes(4, "big") + b"\x90" * (60 * MB),  # 60 MB: an array of empty arrays
        b"\xdf" + (2**20).to_bytes(4, "big") + b"".join(b"\xa6" + b"%06x" % i + b"\x80" for i in range(2**20)),
        nested_maps(400, 2),  # 160,000 empty maps in 0.7 MB: within the length bound, unpacked
        b"\x81\xa1a" * 1_000_000 + b"\x80",  # maps within maps, a million deep
    ]
    bombs.append(bombs[0])  # and again: nothing piles up
    evil = sockets.connect(zmq.DEALER, pipeline.core)  # no session: bombs come before any look-up
    evil.setsockopt(zmq.SNDTIMEO, 30_000)
    for bomb in bombs:
        evil.send(bomb, copy=False)
    # Then a Hello on the same connection, so after the bombs: welcomed within the heartbeat
    # timeout (3 s; the bombs took 46 s before), ...
    started = time.monotonic()
    zmqio.send(evil, Hello("viewer", "after-the-bombs", PROTOCOL))
    assert evil.poll(3000), "the core did not answer a Hello within the heartbeat timeout"
    assert isinstance(zmqio.receive(evil)[0], Welcome)
    welcomed_in = time.monotonic() - started

    # ... the live session's heartbeats keep it alive, and each bomb is counted.
    counted: Stats | None = None
    deadline = time.monotonic() + 60
    next_beat = 0.0
    while counted is None and time.monotonic() < deadline:
        if time.monotonic() >= next_beat:
            zmqio.send(live, Heartbeat())
            next_beat = time.monotonic() + 0.25
        while live.poll(0):
            answer = zmqio.receive(live)[0]
            assert not isinstance(answer, Refused), f"the live session was lost: {answer}"
        if stats.poll(100):
            msg = zmqio.receive(stats, topic=True)[0]
            if isinstance(msg, Stats) and (msg.counters.get("bad_messages") or 0) >= len(bombs):
                counted = msg
    assert counted is not None, "the bombs were not all counted as bad messages in 60 s"
    zmqio.send(live, Heartbeat())
    assert not live.poll(500) or not isinstance(zmqio.receive(live)[0], Refused)

    growth = peak_rss(core.proc.pid) - rss_before
    assert growth < 300 * MB, f"the core's memory rose by {growth / MB:.0f} MB at its peak"
    assert core.proc.poll() is None
    log = core.output()
    assert log.count("does not decode") == 1, log[-3000:]  # said once, then counted
    print(f"welcomed in {welcomed_in:.2f} s; peak growth {growth / MB:.0f} MB")


@pytest.mark.timeout(180)
def test_a_frames_subscriber_that_never_reads_costs_the_core_its_frames_buffer_only(service, tmp_path, sockets):
    """Issue #22: ZeroMQ queues 1,000 messages for each subscriber, so a viewer that stopped
    reading cost the core 1,000 frames: 1.36 GB at 1 MB frames. The frames publisher's queue is
    ENCODERS_FRAMES_BUFFER_MB (64) of frames at most, and a subscriber that reads is not slowed."""
    pipeline = Pipeline(service, {}, tmp_path, "")
    core = pipeline.start_core("--no-recorder")
    frames_pub = f"tcp://127.0.0.1:{pipeline.frames_port}"
    stuck = sockets.connect(zmq.SUB, frames_pub, subscribe=[b"frame/"], rcvhwm=1)
    stuck.setsockopt(zmq.RCVBUF, 64 * 1024)  # never read: its peer's queue fills
    reader = sockets.connect(zmq.SUB, frames_pub, subscribe=[b"frame/"])
    ingest = join(sockets, pipeline.core, Hello("ingest", "cam", PROTOCOL, stream="cam0"))
    jpeg = os.urandom(MB)  # what a 4K camera sends: nothing in it compresses

    previews = itertools.count()

    def send_and_see(timeout_s: float = 10) -> Frame | None:
        """A picture (protocol 3: an ingest's preview, which the core publishes), then the frame as a reader
        that keeps up sees it."""
        picture = Frame("cam0", next(previews), time.time(), 3840, 2160, jpeg)
        zmqio.send(ingest, Pictures.of("cam0", [picture], preview=True))
        while reader.poll(int(timeout_s * 1000)):
            msg = zmqio.receive(reader, topic=True)[0]
            if isinstance(msg, Frame):
                return msg
        return None

    deadline = time.monotonic() + 30
    while not stuck.poll(0):  # until both subscriptions have reached the core (a PUB drops what precedes them)
        send_and_see(timeout_s=0.2)
        assert time.monotonic() < deadline, "the stuck subscriber never got a frame"
    while send_and_see(timeout_s=0.2) is None:  # the reader's last frames, if it missed one
        assert time.monotonic() < deadline, "the reader never got a frame"
    while reader.poll(200):
        zmqio.receive(reader, topic=True)
    rss_before = psutil.Process(core.proc.pid).memory_info().rss
    sent = 400  # 400 MB: what the core would hold for the stuck subscriber under ZeroMQ's default
    seqs = []
    for _ in range(sent):
        frame = send_and_see()
        assert frame is not None, "the reader that keeps up got no frame in 10 s"
        seqs.append(frame.seq)
    assert seqs == list(range(seqs[0], seqs[0] + sent)), "the reader that keeps up missed frames"

    rss = psutil.Process(core.proc.pid).memory_info().rss
    growth = rss - rss_before
    # The buffer (64 MB) and what is in flight; ZeroMQ's default would hold all 400.
    assert growth < 160 * MB, f"the core holds {growth / MB:.0f} MB more for a subscriber that never reads"
    assert core.proc.poll() is None
    print(f"core grew by {growth / MB:.0f} MB")
