"""shared/zmqio.py's small helpers that no socket test covers by itself."""

from __future__ import annotations

from encoders.shared.zmqio import poll_ms


def test_a_wait_until_a_deadline_is_rounded_up_to_whole_milliseconds():
    # Rounded down, 0.4 ms left would be a poll of 0 ms: a loop that spins until its deadline.
    assert [poll_ms(s) for s in (0.0004, 0.001, 0.0021, 0.5)] == [1, 1, 3, 500]
    assert poll_ms(0.0) == 0 and poll_ms(-0.003) == 0  # due, or past it: no wait
