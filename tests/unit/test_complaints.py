"""Bad input is logged once per kind, then counted, with a reminder at most once a minute (issue #13)."""

from __future__ import annotations

import logging

from encoders.shared.complaints import Complaints


def test_the_first_of_each_kind_is_logged_the_rest_counted_with_a_reminder_a_minute(caplog):
    now = [0.0]
    complain = Complaints(logging.getLogger("t"), "the Stats", clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for i in range(10_000):
            now[0] = i * 0.01  # 100 a second for 100 s
            complain("corrupt", "skipped a corrupt frame: %s", f"bad {i}")
        complain("bad_messages", "a message does not decode: %s", "x")
    lines = caplog.messages
    first = "skipped a corrupt frame: bad 0 (more of these are counted as 'corrupt' in the Stats, not logged)"
    assert lines[0] == first
    # One reminder after a minute with the count since, and the latest example; nothing else.
    reminder = "6000 more 'corrupt' in the last 60 s (6001 in all); the latest: skipped a corrupt frame: bad 6000"
    assert lines[1] == reminder
    assert lines[2].startswith("a message does not decode: x") and len(lines) == 3
    assert complain.counts == {"corrupt": 10_000, "bad_messages": 1}
