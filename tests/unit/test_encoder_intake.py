"""What a worker holds: never more than its capacity, room made by finishing, lives kept apart."""

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from encoders.services.encoder.intake import Intake
from encoders.services.encoder.preprocess import Preprocessor, load_batch
from encoders.services.encoder.thumbnails import Thumbnails
from encoders.shared import messages
from encoders.shared.messages import Frame

from .message_strategies import message_of


def frame(seq):
    return Frame("cam0", seq, 0.0, 1, 1, b"")


def test_batches_take_in_arrival_order_up_to_the_maximum():
    intake = Intake(capacity=8)
    intake.begin(1)
    for i in range(5):
        assert intake.add(frame(i))
    batch = intake.take(3)
    assert [h.frame.seq for h in batch] == [0, 1, 2]
    assert len(intake) == 2 and intake.held == 5  # held until finished, even once taken into a batch


def test_no_more_than_the_capacity_is_held_and_finishing_makes_room():
    intake = Intake(capacity=2)
    intake.begin(1)
    assert intake.add(frame(0)) and intake.add(frame(1))
    assert not intake.add(frame(2)) and intake.held == 2
    assert intake.finish(intake.take(1)) and intake.add(frame(3))


def test_a_lost_session_gives_up_everything_and_its_frames_are_not_finished_later():
    intake = Intake(capacity=4)
    intake.begin(1)
    for i in range(3):
        intake.add(frame(i))
    running = intake.take(2)  # being encoded when the session was lost
    assert intake.give_up() == 3
    assert (len(intake), intake.held, intake.life) == (0, 0, 0)
    assert intake.finish(running) == [] and intake.held == 0  # no room counted twice
    intake.begin(2)
    assert intake.finish(running) == []  # nor in the next life
    intake.add(frame(9))
    assert [h.frame.seq for h in intake.finish(intake.take(1))] == [9] and intake.held == 0


# -- any frame the core can send -----------------------------------------------------------------


def small_jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 16), (seed % 256, 80, 160)).save(out, "JPEG")
    return out.getvalue()


JPEGS = st.binary(max_size=64) | st.integers(0, 255).map(small_jpeg)
PRE = Preprocessor(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@settings(deadline=None)
@given(frames=st.lists(message_of(Frame, jpeg=JPEGS), max_size=8))
def test_a_worker_takes_any_valid_frames_sorts_good_from_corrupt_and_thumbnails_never_fail(frames):
    intake = Intake(capacity=16)
    intake.begin(1)
    for frame in frames:
        received = messages.decode([bytes(p) for p in messages.encode(frame)])  # as the worker gets it
        assert isinstance(received, Frame) and intake.add(received)
    held = intake.take(16)
    thumbnails = Thumbnails(8, 70)
    arrays, ok, bad, made = load_batch(PRE, [h.frame.jpeg for h in held], each=thumbnails.of)
    assert sorted(ok + [i for i, _ in bad]) == list(range(len(held)))
    assert all(a.shape == (16, 16, 3) for a in arrays) and len(made) == len(ok)
    for pending in made:
        thumbnail = thumbnails.result(pending, "fuzz")
        assert thumbnail == b"" or Image.open(io.BytesIO(thumbnail)).size[0] <= 8
    assert intake.finish(held) == held and intake.held == 0
