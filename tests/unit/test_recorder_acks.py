"""What the recorder acknowledges to the core, and when: the highest seq up to which every record is durable."""

from encoders.services.recorder.acks import AckTracker
from encoders.shared.messages import Ack


def test_an_ack_covers_every_record_up_to_the_first_not_yet_durable():
    t = AckTracker()
    for seq in range(5):
        t.expect("cam0", seq)
    assert t.take() == []  # nothing durable yet
    t.durable("cam0", 0)
    t.durable("cam0", 1)
    assert t.take() == [Ack("cam0", 1)]
    t.durable("cam0", 3)  # 2 is not: nothing more
    assert t.take() == []
    t.durable("cam0", 2)
    assert t.take() == [Ack("cam0", 3)]
    assert t.waiting() == 1 and t.floors() == {"cam0": 3}


def test_streams_are_acknowledged_apart():
    t = AckTracker()
    t.expect("cam0", 10)
    t.expect("cam1", 4)
    t.durable("cam1", 4)
    assert t.take() == [Ack("cam1", 4)]
    t.durable("cam0", 10)
    assert t.take() == [Ack("cam0", 10)]


def test_refused_records_are_acknowledged_in_their_turn():
    t = AckTracker()
    t.expect("cam0", 0)
    t.refused("cam0", 1)  # invalid, counted: nothing to wait for, but not before 0 is durable
    assert t.take() == []
    t.durable("cam0", 0)
    assert t.take() == [Ack("cam0", 1)]


def test_an_end_of_stream_is_acknowledged_once_everything_before_it_is_durable():
    t = AckTracker()
    t.expect("cam0", 5)
    t.ended("cam0", 7)  # frames 6 and 7 were dropped: its last_seq is past the last record
    assert t.take() == []
    t.durable("cam0", 5)
    assert t.take() == [Ack("cam0", 7, ended=True)]
    t.expect("cam0", 8)  # the stream starts again
    t.durable("cam0", 8)
    assert t.take() == [Ack("cam0", 8, ended=False)]


def test_a_record_sent_again_is_acknowledged_again():
    t = AckTracker()
    t.expect("cam0", 0)
    t.durable("cam0", 0)
    assert t.take() == [Ack("cam0", 0)]
    t.repeated("cam0", 0)  # the core did not get that ack (a break): it says it again
    assert t.take() == [Ack("cam0", 0)]
    t.expect("cam0", 1)
    t.repeated("cam0", 1)  # sent again while its row is still on its way: its own ack will cover it
    assert t.take() == []
    t.durable("cam0", 1)
    assert t.take() == [Ack("cam0", 1)]


def test_a_resumed_run_starts_from_what_is_stored_and_a_new_life_hears_every_floor():
    t = AckTracker()
    t.resume("cam0", 41)
    t.resume("cam1", 9)
    t.repeated("cam0", 40)
    assert t.take() == [Ack("cam0", 41)]
    t.ended("cam1", 12)
    t.take()
    assert t.floors() == {"cam0": 41, "cam1": 12}
    assert t.announce() == [Ack("cam0", 41), Ack("cam1", 12, ended=True)]


def test_the_counts_kept_are_those_of_what_is_acknowledged():
    """A resumed recorder starts from them: the counts of records not yet durable would count
    frames that are not stored."""
    t = AckTracker()
    t.expect("cam0", 0, {"L1": {"embedded": 1}})
    t.expect("cam0", 1, {"L1": {"embedded": 2}})
    t.durable("cam0", 0)
    assert t.take() == [Ack("cam0", 0)]
    assert t.lives_changed and t.durable_lives == {"cam0": {"L1": {"embedded": 1}}}
    t.lives_changed = False
    t.durable("cam0", 1)
    t.ended("cam0", 1, {"L1": {"embedded": 2, "published": 2}})
    assert t.take() == [Ack("cam0", 1, ended=True)]
    assert t.lives_changed and t.durable_lives["cam0"] == {"L1": {"embedded": 2, "published": 2}}


def test_acknowledgements_not_sent_are_taken_again_even_when_nothing_more_comes():
    """A full disk kept the lives file from being written first: the acknowledgements taken wait. The
    next take gives them again, the end of a stream too, though no row of it comes any more."""
    t = AckTracker()
    t.expect("cam0", 5)
    t.ended("cam0", 6)
    t.durable("cam0", 5)
    taken = t.take()
    assert taken == [Ack("cam0", 6, ended=True)]
    assert t.take() == []  # taken: not due again by itself
    t.unsent(taken)
    assert t.take() == taken
