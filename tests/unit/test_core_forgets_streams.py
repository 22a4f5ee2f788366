"""Issue #22: a core that sees many short-lived streams must not grow forever. A stream that has ended
and settled is forgotten (streams.py, ``forget_settled``): only its counts, its next number and its
last capture time stay, so that a stream coming back goes on counting from where it was."""

from __future__ import annotations

import numpy as np

from encoders.services.metrics.reorder import LOST
from encoders.services.metrics.stopping import Finish
from encoders.services.metrics.streams import Ended, Streams
from encoders.shared.messages import (
    PROTOCOL,
    Ack,
    Bye,
    CaptureEnded,
    Embedding,
    EndOfStream,
    Frame,
    Heartbeat,
    Hello,
    Ready,
    Stop,
    Stopped,
)

from .test_core_service import Rig, capture, embedding


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def one_epoch(s: Streams, stream: str, now: float, frames: int = 3) -> None:
    """An ingest's epoch: a few frames numbered, embedded, the epoch ended, everything released."""
    first = s.streams[stream].next_number if stream in s.streams else 0
    s.start_epoch(stream, first, now)
    seqs = []
    for _ in range(frames):
        seq = s.streams[stream].next_number
        s.numbered(stream, seq, now)
        seqs.append(seq)
    for seq in seqs:
        s.outcome(stream, seq, Embedding(stream, seq, now, "w", "m", vector=unit(1, seq % 2 + 1)), now)
    s.end_epoch(stream)
    s.release(now)
    s.forget_settled()


def test_many_streams_started_and_ended_leave_no_state_but_their_counts():
    s = Streams(rolling_window=50, max_wait=1)
    for i in range(3000):
        one_epoch(s, f"cam{i}", float(i))
    assert s.streams == {}  # no order, drift or alerts left of any of them
    assert len(s.ended) == 3000
    # What is kept is a few numbers a name (as numbering keeps a high-water mark a name).
    kept = s.ended["cam7"]
    assert isinstance(kept, Ended) and kept.next_number == 3
    assert set(vars(kept)) == {"counts", "late", "next_number", "last_capture"}
    assert s.totals("cam7") == {"published": 3, "embedded": 3, "dropped": 0, "skipped": 0, "lost": 0, "late": 0}
    assert s.settled("cam7") and s.waiting("cam7") == 0 and "cam7" in s.names()


def test_streams_that_come_back_again_and_again_keep_bounded_state_and_count_on():
    s = Streams(rolling_window=50, max_wait=1)
    for i in range(2000):  # three cameras whose ingests reconnect every few frames
        one_epoch(s, f"cam{i % 3}", float(i))
    assert s.streams == {} and set(s.ended) == {"cam0", "cam1", "cam2"}
    totals = s.totals("cam0")
    # Never back to zero: a recorder adds up each life's last counts.
    assert totals["published"] == totals["embedded"] == 3 * 667
    assert s.ended["cam0"].next_number == 3 * 667  # numbers go on, never reused


def test_a_stream_that_comes_back_starts_a_new_epoch_where_it_left_off():
    s = Streams(rolling_window=50, max_wait=1)
    one_epoch(s, "cam0", 0.0)
    s.start_epoch("cam0", 0, 1.0)  # the core's numbering says 3; a lower first_seq never goes back
    s.numbered("cam0", 3, 1.0)
    s.outcome("cam0", 3, Embedding("cam0", 3, 1.0, "w", "m", vector=unit(1, 0)), 1.0)
    out = s.release(1.0)
    assert [type(m).__name__ for m in out] == ["StreamStart", "MetricsRecord"]
    assert out[0].first_seq == 3  # type: ignore[union-attr]
    assert out[1].similarity is None  # type: ignore[union-attr]  # drift starts afresh at an epoch, as always
    assert out[1].counts["embedded"] == 4 and out[1].counts["published"] == 4  # type: ignore[union-attr]


def test_a_result_for_a_frame_given_up_before_its_stream_was_forgotten_is_counted_late():
    s = Streams(rolling_window=50, max_wait=1)
    s.start_epoch("cam0", 0, 0.0)
    s.numbered("cam0", 0, 0.0)
    s.numbered("cam0", 1, 0.0)
    s.outcome("cam0", 1, Embedding("cam0", 1, 0.0, "w", "m", vector=unit(1, 0)), 0.0)
    s.end_epoch("cam0")
    out = s.release(5.0)  # seq 0 waited past max_wait: lost
    assert isinstance(out[-1], EndOfStream) and out[-1].counts["lost"] == 1
    assert s.forget_settled() == ["cam0"]
    assert not s.outcome("cam0", 0, LOST, 6.0)  # the core giving it up again: not late
    assert not s.outcome("cam0", 0, Embedding("cam0", 0, 0.0, "w", "m", vector=unit(1, 0)), 6.0)
    assert s.totals("cam0")["late"] == 1


def test_the_core_forgets_ended_streams_and_still_reports_them_when_stopped(sockets, tmp_path):
    rig = Rig(sockets, tmp_path, max_streams=8, recorder=False)
    worker = rig.worker(capacity=4)
    worker.got()
    for i in range(24):  # cameras that each send a frame and go (more than max_streams in all)
        now = float(i)
        ingest = rig.ingest(f"cam{i}", now=now)
        ingest.got()
        ingest.send(capture(now))
        rig.step(now + 0.1)
        (frame,) = [m for m in worker.got() if isinstance(m, Frame)]
        worker.send(embedding(frame))
        ingest.send(CaptureEnded("done"), Bye())
        rig.step(now + 0.2)
    core = rig.core
    assert core.streams.streams == {} and len(core.streams.ended) == 24
    assert core.ingests.live == {} and core.ingests.of == {} and core.ingests.clocks.offsets == {}
    assert core.broker.waiting == {} and not core.broker.turn
    assert len(core.ingests.gone) <= 4 * rig.cfg.max_streams
    # Stopped still names every stream of this life, with its totals.
    control = rig.peer("ctl", Hello("control", "ctl", PROTOCOL), now=25.0)
    control.got()
    control.send(Stop("done"))
    rig.step(25.1)
    assert [type(m) for m in worker.got()] == [Stop]
    (stopped,) = [m for m in control.got() if isinstance(m, Stopped)]
    assert len(stopped.streams) == 24
    assert stopped.streams["cam17"]["published"] == stopped.streams["cam17"]["embedded"] == 1


def test_a_drains_last_resort_gives_up_only_ended_epochs_frames_without_an_outcome():
    s = Streams(rolling_window=50, max_wait=60)
    for stream in ("cam0", "cam1"):
        s.start_epoch(stream, 0, 0.0)
        for seq in range(5):
            s.numbered(stream, seq, 0.0)
    for seq in (0, 1, 3):  # 2 and 4 never get one
        s.outcome("cam0", seq, Embedding("cam0", seq, 0.0, "w", "m", vector=unit(1, seq + 1)), 0.0)
    s.end_epoch("cam0")  # cam1's epoch is still open: its frames may yet come
    s.release(0.0)
    assert s.unsettled() == ["cam0", "cam1"]
    assert s.give_up_unowned(1.0) == {"cam0": [2, 4]}
    s.release(1.0)
    assert s.totals("cam0") == {"published": 5, "embedded": 3, "dropped": 0, "skipped": 0, "lost": 2, "late": 0}
    assert s.unsettled() == ["cam1"] and s.give_up_unowned(2.0) == {}


def test_a_stop_never_hangs_on_an_outcome_nothing_is_left_to_bring(sockets, tmp_path):
    """A frame numbered that no queue, worker or ingest holds (a fault of the core's, made here by
    numbering one by hand): the drain gives it up as lost a heartbeat timeout after nothing is left
    (3 s here), logs it as an error, and the stop is answered with totals that add up."""
    rig = Rig(sockets, tmp_path)
    ingest = rig.ingest()
    rec = rig.peer("rec", Hello("recorder", "rec", PROTOCOL))
    rec.send(Ready("run-1", {}))
    control = rig.peer("ctl", Hello("control", "ctl", PROTOCOL))
    rig.core.streams.numbered("cam0", 0, 0.1)  # numbered, never queued: nothing will bring its outcome
    control.send(Stop("done"))
    rig.step(0.2)
    ingest.send(CaptureEnded("told to stop"), Bye())
    rig.step(0.3)
    assert not rig.core.done and rig.core.streams.unsettled() == ["cam0"]
    for t in (1.5, 2.5, 3.2):  # the recorder and the control session say they are there meanwhile
        rec.send(Heartbeat())
        control.send(Heartbeat())
        rig.step(t)
    assert rig.core.drain is not None and rig.core.drain.step(rig.core.progress, 3.2) != Finish()
    rig.step(3.4)  # more than 3 s after nothing was left: given up, and its stream's end goes out
    rig.step(3.45)
    (end,) = [m for m in rec.got() if isinstance(m, EndOfStream)]
    assert end.counts["lost"] == 1
    rec.send(Ack("cam0", end.last_seq, ended=True))
    rig.step(3.5)
    (stopped,) = [m for m in control.got() if isinstance(m, Stopped)]
    assert stopped.streams["cam0"]["published"] == 1 and stopped.streams["cam0"]["lost"] == 1
    assert rig.core.counters["outcomes_unowned"] == 1
