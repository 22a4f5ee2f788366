"""Credit accounting of a worker: it never holds more than it asked for, and gives back what it finishes."""

from encoders.services.encoder.intake import Intake
from encoders.shared.messages import Frame


def frame(seq):
    return Frame("cam0", seq, 0.0, 1, 1, b"")


def test_batches_take_in_arrival_order_up_to_the_maximum():
    intake = Intake(capacity=8, sources=1)
    for i in range(5):
        intake.add(0, frame(i))
    batch = intake.take(3)
    assert [h.frame.seq for h in batch] == [0, 1, 2]
    assert len(intake) == 2


def test_finished_frames_are_credited_back_to_their_own_ingest():
    intake = Intake(capacity=4, sources=2)
    intake.add(0, frame(0))
    intake.add(1, frame(0))
    intake.add(1, frame(1))
    batch = intake.take(10)
    assert intake.free(1) == 2  # held until finished, even once taken into a batch
    assert intake.finish(batch) == {0: 1, 1: 2}
    assert intake.free(0) == 4 and intake.free(1) == 4
