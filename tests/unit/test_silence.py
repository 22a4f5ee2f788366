"""shared/silence.py: when a stream counts as down, for the recorder and the web page alike."""

from encoders.shared.silence import SilentStreams


def test_a_silent_stream_is_down_once_per_silence_and_an_ended_one_is_not():
    silent = SilentStreams(down_after=5.0)
    silent.heard("cam0", 3, now=100.0)
    silent.heard("cam1", 7, now=100.0)
    silent.ended("cam1")
    assert silent.newly_down(104.9) == []
    assert silent.newly_down(105.0) == [("cam0", 3, 5.0)]
    assert silent.newly_down(200.0) == []  # told once
    silent.heard("cam0", 4, now=201.0)  # back
    assert silent.newly_down(206.5) == [("cam0", 4, 5.5)]
    silent.heard("cam1", 0, now=300.0)  # an ended stream that starts again is watched again
    assert silent.newly_down(305.0) == [("cam1", 0, 5.0)]


def test_down_after_0_turns_it_off():
    silent = SilentStreams(down_after=0)
    silent.heard("cam0", 0, now=0.0)
    assert silent.newly_down(1e9) == []
