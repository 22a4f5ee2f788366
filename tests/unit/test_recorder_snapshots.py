"""Snapshot policy, and the pictures asked for to write snapshots (Wants: which, matched, given up, bounded)."""

from encoders.services.recorder.snapshots import SnapshotPolicy, Wants, snapshot_name


def taken_at(policy: SnapshotPolicy, times, available=lambda t: True):
    """Drive the policy as the recorder does; the capture times that got a snapshot."""
    out = []
    for t in times:
        if policy.due(t) and available(t):
            policy.taken(t)
            out.append(t)
    return out


def test_first_frame_then_every_interval_of_capture_time():
    times = [100.0 + 0.4 * i for i in range(30)]  # 100.0 .. 111.6
    got = taken_at(SnapshotPolicy(3.0), times)
    # 100.0, then the first >= 103.0 is 103.2, then >= 106.2 is 106.4, then >= 109.4 is 109.6
    assert got == [100.0, 103.2, 106.4, 109.6]


def test_interval_counts_from_the_last_snapshot_not_a_fixed_grid():
    got = taken_at(SnapshotPolicy(1.0), [0.0, 0.9, 1.5, 2.0, 2.4, 2.6])
    assert got == [0.0, 1.5, 2.6]


def test_interval_zero_takes_every_frame():
    times = [5.0, 5.0, 5.1, 7.0]
    assert taken_at(SnapshotPolicy(0.0), times) == times


def test_a_missing_jpeg_passes_the_snapshot_to_the_next_available_frame():
    missing = {10.0, 12.0, 12.5}
    got = taken_at(
        SnapshotPolicy(2.0), [10.0, 10.5, 11.0, 12.0, 12.5, 13.0, 14.0, 15.0], available=lambda t: t not in missing
    )
    assert got == [10.5, 13.0, 15.0]


def test_snapshot_name_is_six_digit_seq():
    assert snapshot_name(0) == "frame_000000.jpg"
    assert snapshot_name(30) == "frame_000030.jpg"
    assert snapshot_name(1234567) == "frame_1234567.jpg"


# The frame cache these replaced kept every frame the frames publisher sent; the recorder now asks
# for exactly the seqs it needs (WantPictures), so what is tested is the bookkeeping of those asks.


def test_a_missed_snapshot_is_due_again_from_the_next_frame():
    policy = SnapshotPolicy(2.0)
    assert policy.due(10.0)
    before = policy.last
    policy.taken(10.0)  # asked for: taken tentatively
    assert not policy.due(10.5) and not policy.due(11.9)
    policy.missed(10.0, before)  # its picture never came
    assert policy.due(11.9)  # the next frame to arrive is due again
    policy.taken(11.9)
    policy.missed(10.0, before)  # a later snapshot was taken since: the late news changes nothing
    assert policy.last == 11.9 and not policy.due(13.0)


def test_wants_are_sent_once_batched_per_turn():
    wants = Wants(limit=10, wait_s=2.0)
    for seq in (3, 7, 9):
        assert wants.add(seq, float(seq), now=0.0, periodic=True, scene=False) is not None
    assert wants.to_send() == [3, 7, 9]  # one WantPictures' worth
    assert wants.to_send() == []  # asked once
    wants.add(12, 12.0, now=0.5, periodic=False, scene=True)
    assert wants.to_send() == [12] and len(wants) == 4


def test_an_arriving_picture_matches_its_want_once():
    wants = Wants(limit=10, wait_s=2.0)
    wants.add(5, 1.0, now=0.0, periodic=True, scene=True)
    want = wants.take(5)
    assert want is not None and want.seq == 5 and want.periodic and want.scene
    assert wants.take(5) is None  # the same picture again: nothing wanted
    assert wants.take(6) is None  # never asked for
    assert len(wants) == 0 and not wants.waiting(5)


def test_wants_expire_at_their_deadline_and_are_not_matched_after():
    wants = Wants(limit=10, wait_s=2.0)
    wants.add(1, 1.0, now=0.0, periodic=True, scene=False)
    wants.add(2, 2.0, now=1.0, periodic=False, scene=True)
    assert wants.expired(1.999) == []
    (gone,) = wants.expired(2.0)
    assert gone.seq == 1 and wants.waiting(2) and not wants.waiting(1)
    assert wants.take(1) is None  # its picture comes late: not wanted any more (the caller counts it)
    assert [w.seq for w in wants.expired(10.0)] == [2] and len(wants) == 0


def test_wants_are_bounded():
    wants = Wants(limit=3, wait_s=2.0)
    assert all(wants.add(s, float(s), now=0.0, periodic=False, scene=True) for s in range(3))
    assert wants.add(3, 3.0, now=0.0, periodic=False, scene=True) is None  # full: not asked
    assert wants.to_send() == [0, 1, 2] and len(wants) == 3
    wants.take(0)
    assert wants.add(4, 4.0, now=0.0, periodic=False, scene=True) is not None  # room again
