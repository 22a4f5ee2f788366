"""Snapshot policy and the frame cache that feeds it."""

from encoders.services.recorder.snapshots import FrameCache, SnapshotPolicy, snapshot_name


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


def test_cache_take_returns_the_frame_and_forgets_older_ones():
    cache = FrameCache(max_frames=10)
    for seq in range(5):
        cache.put(seq, b"jpeg%d" % seq)
    assert cache.take(2) == b"jpeg2"
    assert len(cache) == 2  # 3 and 4 remain; 0 and 1 can never be wanted again
    assert cache.take(1) is None
    assert cache.take(4) == b"jpeg4"
    assert len(cache) == 0


def test_cache_is_bounded_dropping_the_oldest():
    cache = FrameCache(max_frames=3)
    for seq in range(6):
        cache.put(seq, b"x")
    assert len(cache) == 3
    assert cache.take(2) is None
    assert cache.take(3) == b"x"
