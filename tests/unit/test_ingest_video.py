"""The pure parts of the ingest's video sources (issue #24): which frames the sampling takes, capture
times from a stream's own timestamps (anchored, drift checked), a file's pacing, what kind of
camera a URL names, and how frames left out reach the core's counts as dropped."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from encoders.services.ingest.capture_clock import CaptureClock, Pacer
from encoders.services.ingest.delivery import Delivery
from encoders.services.ingest.errors import UnusableStream
from encoders.services.ingest.sampling import Sampler
from encoders.services.ingest.urls import kind_of
from encoders.services.metrics.streams import Streams
from encoders.shared.messages import Embedding

TB = Fraction(1, 90000)  # RTP's video clock


def test_a_30_fps_stream_sampled_to_5_takes_every_6th_frame_and_counts_the_rest():
    s = Sampler(5)
    taken = [i for i in range(60) if s.want_picture(1000 + i / 30)]
    assert taken == list(range(0, 60, 6)) and s.left_out == 50
    s = Sampler(5)
    taken = [i for i in range(50) if s.want_picture(i / 25)]  # 25 fps: every 5th
    assert taken == list(range(0, 50, 5))


def test_sampling_falls_back_in_step_after_a_gap_and_after_time_goes_back():
    s = Sampler(5)
    assert s.want_picture(0.0) and not s.want_picture(0.1)
    assert s.want_picture(10.0)  # a gap: taken at once...
    assert not s.want_picture(10.1) and s.want_picture(10.2)  # ...and the rate from there
    assert s.want_picture(3.0)  # time went back (a new connection's timestamps): from there


def test_keyframes_only_leaves_out_every_other_packet_before_decoding():
    s = Sampler(keyframes_only=True)
    kept = [s.want_packet(i % 10 == 0) for i in range(30)]
    assert sum(kept) == 3 and s.left_out == 27
    assert all(Sampler().want_packet(False) for _ in range(3))


def test_capture_times_are_the_streams_own_anchored_at_the_first_frame():
    clock = CaptureClock(max_drift=2.0)
    arrivals = [100.0 + i / 30 + 0.005 * (i % 3) for i in range(90)]  # network jitter on arrival
    times = [clock.capture_time(3000 * i, TB, a) for i, a in enumerate(arrivals)]
    assert times[0] == 100.0 and all(t <= a for t, a in zip(times, arrivals, strict=True))
    assert np.allclose(np.diff(times), 1 / 30) and clock.resets == 0


def test_a_late_first_frame_is_corrected_by_the_next_and_no_frame_is_dated_after_it_arrived():
    clock = CaptureClock(max_drift=2.0)
    assert clock.capture_time(0, TB, 100.5) == 100.5  # it came half a second late
    assert clock.capture_time(3000, TB, 100.0 + 1 / 30) == pytest.approx(100 + 1 / 30)
    assert clock.capture_time(6000, TB, 100.2) == pytest.approx(100 + 2 / 30)


def test_a_camera_clock_that_falls_behind_or_jumps_is_anchored_again_and_counted():
    clock = CaptureClock(max_drift=1.0)
    # The camera's clock runs 1% slow: its frames fall behind ours, 1 s after 100 s.
    t = [clock.capture_time(int(i * 0.99 * 90000), TB, 1000.0 + i) for i in range(150)]
    assert clock.resets == 1 and t[-1] == pytest.approx(1149, abs=1.0)
    jumpy = CaptureClock(max_drift=1.0)
    jumpy.capture_time(900000, TB, 50.0)
    assert jumpy.capture_time(0, TB, 50.04) == 50.04  # back to 0: the camera restarted its clock
    assert jumpy.capture_time(90000 * 3600, TB, 50.08) == 50.08  # an hour ahead at once
    assert jumpy.resets == 2
    assert CaptureClock(max_drift=1).capture_time(None, None, 7.0) == 7.0  # no timestamps: arrival


def test_a_file_is_paced_by_its_timestamps_and_a_loop_goes_on_after_its_last_frame():
    now = [500.0]
    slept: list[float] = []

    def sleep(delay: float) -> bool:
        slept.append(delay)
        now[0] += delay
        return False

    pacer = Pacer(sleep, clock=lambda: now[0])
    tb = Fraction(1, 1000)
    due = [pacer.due(pts, tb) for pts in (40, 140, 240)]  # a file whose first frame is at 40 ms
    assert due == pytest.approx([500.0, 500.1, 500.2])
    assert not pacer.wait(due[2]) and slept == pytest.approx([0.2])
    pacer.next_play(0.1)
    assert pacer.due(40, tb) == pytest.approx(500.3)  # the next play's first frame, one frame later


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://pi:8000/stream.mjpg", "mjpeg"),
        ("rtsp://user:pw@cam:554/h264", "rtsp"),
        ("RTSPS://cam/live", "rtsp"),
        ("tcp://pi:8888", "h264-tcp"),
    ],
)
def test_the_kind_of_camera_is_its_scheme(url, kind):
    assert kind_of(url) == kind


def test_a_file_is_a_path_that_exists_and_bad_urls_say_why_without_the_password(tmp_path):
    clip = tmp_path / "clip.mkv"
    clip.write_bytes(b"")
    assert kind_of(str(clip)) == kind_of(f"file://{clip}") == "file"
    for url, said in [
        ("rtsp://user:secret@/cam", "expected rtsp://"),
        ("tcp://pi", "expected tcp://HOST:PORT"),
        ("tcp://pi:port", "invalid stream URL"),
        ("ftp://user:secret@x/y", "expected http(s)://"),
        (str(tmp_path / "nope.mp4"), "no such video file"),
    ]:
        with pytest.raises(UnusableStream, match="") as err:
            kind_of(url)
        assert said in str(err.value) and "secret" not in str(err.value)


def test_frames_left_out_are_told_in_the_next_hello_or_at_the_end_never_twice():
    d = Delivery(lossless=False)
    d.source_left_out(5)  # before the first Welcome
    assert d.hello() == 5
    d.join(credit=0)
    assert d.unreported == 0
    d.source_left_out(12)  # 7 more since
    d.source_left_out(12)  # the same total again: nothing new
    assert d.unreported == 7 and d.left_out == 12
    d.lose()
    assert d.hello() == 7  # a rejoin's Hello carries them...
    d.join(credit=0)
    assert d.unreported == 0  # ...and the end's CaptureEnded has none left to tell


def test_the_core_counts_a_capture_endeds_dropped_as_published_and_dropped():
    s = Streams(rolling_window=50, max_wait=1)
    s.start_epoch("cam0", 0, 0.0, undelivered=2)
    for seq in range(3):
        s.numbered("cam0", seq, 0.0)
        s.outcome("cam0", seq, Embedding("cam0", seq, 0.0, "w", "m", vector=np.ones(4, np.float32) / 2), 0.0)
    s.end_epoch("cam0", {"dropped": 15, "corrupt": 1})
    s.release(0.0)
    c = s.streams["cam0"].counts
    assert (c["published"], c["embedded"], c["dropped"], c["corrupt"]) == (20, 3, 17, 1)
    assert c["published"] == c["embedded"] + c["dropped"] + c["skipped"] + c["lost"]
