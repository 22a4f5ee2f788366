"""The viewer's per-stream bookkeeping and its display check. Pure, no window."""

from __future__ import annotations

import json
import os
import random
import socket
import warnings

import cv2
import numpy as np
import pytest

from encoders.services.viewer.plot import DriftPlot
from encoders.services.viewer.snapshot import drift_since, snapshot
from encoders.services.viewer.state import RateMeter, ViewerState
from encoders.services.viewer.viewer import decode_new_frames
from encoders.services.viewer.window import display_problem
from encoders.shared.messages import EndOfStream, Frame, MetricsRecord, Stats, StreamStart


def frame(seq: int, stream: str = "cam0") -> Frame:
    return Frame(stream=stream, seq=seq, t_capture=1000.0 + seq, width=4, height=3, jpeg=b"jpeg%d" % seq)


def record(seq: int, drift: float | None, stream: str = "cam0") -> MetricsRecord:
    return MetricsRecord(
        stream=stream,
        seq=seq,
        t_capture=1000.0 + seq,
        t_encoded=0.0,
        worker="w",
        model="m",
        similarity=None if drift is None else 1 - drift,
        drift=drift,
    )


def test_only_the_newest_frame_of_each_stream_is_kept():
    state = ViewerState()
    for seq in range(5):
        state.add(frame(seq))
    state.add(frame(0, "cam1"))
    state.add(frame(1, "cam1"))
    shown = state.take_new_frames(now=1.0)
    assert sorted((f.stream, f.seq) for f in shown) == [("cam0", 4), ("cam1", 1)]
    assert state.counters["frames_received"] == 7
    assert state.counters["frames_superseded"] == 5  # 4 of cam0, 1 of cam1 never shown
    assert state.take_new_frames(now=2.0) == []  # nothing new: nothing to decode again
    state.add(frame(5))
    assert [f.seq for f in state.take_new_frames(now=3.0)] == [5]


def test_metrics_keep_the_newest_record_and_a_bounded_drift_history():
    state = ViewerState(history=3)
    state.add(record(0, None))  # first frame of a stream: no drift, no point
    for seq in range(1, 6):
        state.add(record(seq, 0.1 * seq))
    st = state.streams["cam0"]
    assert st.metrics is not None and st.metrics.seq == 5
    assert state.drift_history() == {
        "cam0": [(1003.0, pytest.approx(0.3)), (1004.0, pytest.approx(0.4)), (1005.0, pytest.approx(0.5))]
    }
    assert state.counters["metrics_received"] == 6


def test_end_of_stream_marks_the_stream_until_a_new_frame_arrives():
    state = ViewerState()
    state.add(frame(0))
    state.add(EndOfStream(stream="cam0", last_seq=0))
    assert state.streams["cam0"].ended
    state.add(frame(1))
    assert not state.streams["cam0"].ended


def test_a_new_epoch_of_a_stream_breaks_its_drift_line_once():
    state = ViewerState()
    state.add(StreamStart("cam0", first_seq=0))  # the first epoch: nothing to break
    state.add(record(1, 0.1))
    state.add(record(2, 0.2))
    state.add(EndOfStream("cam0", last_seq=2))
    state.add(StreamStart("cam0", first_seq=3))  # the camera restarted
    state.add(StreamStart("cam0", first_seq=3))  # said twice (a second Hello): still one gap
    st = state.streams["cam0"]
    assert not st.ended and st.epochs == 3
    state.add(record(3, None))  # an epoch's first frame has no drift
    state.add(record(4, 0.4))
    points = state.drift_history()["cam0"]
    assert [t for t, _ in points] == [1001.0, 1002.0, 1002.0, 1004.0]  # the gap at the last point's time
    assert [np.isnan(d) for _, d in points] == [False, False, True, False]
    # The page: the gap is a null, sent once to each client as any point is.
    snap = snapshot(state, 0.0, {})
    assert snap["drift"]["cam0"]["points"][2] == [1002.0, None]
    json.dumps(snap, allow_nan=False)
    assert drift_since(snap["drift"], {"cam0": 2}) == {
        "cam0": {"reset": False, "points": [[1002.0, None], [1004.0, 0.4]]}
    }
    # The window's plot draws both segments and no line between them (matplotlib breaks at NaN).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = DriftPlot(400, 300).render(state.drift_history())
    assert image.shape == (300, 400, 3)


def test_stats_are_kept_per_service_and_stream():
    state = ViewerState()
    state.add(Stats(service="ingest", stream="cam0", counters={"dropped": 1}))
    state.add(Stats(service="ingest", stream="cam0", counters={"dropped": 4}))
    assert state.stats[("ingest", "cam0")].counters == {"dropped": 4}


def test_a_frame_that_does_not_decode_is_counted_and_the_previous_image_stays():
    state = ViewerState()
    image = np.full((3, 4, 3), 90, np.uint8)
    _ok, jpeg = cv2.imencode(".jpg", image)
    images: dict = {}
    counters = {"frames_shown": 0, "bad_jpeg": 0}
    state.add(Frame(stream="cam0", seq=0, t_capture=0.0, width=4, height=3, jpeg=jpeg.tobytes()))
    decode_new_frames(state, images, counters, now=1.0)
    assert images["cam0"].shape == (3, 4, 3)
    state.add(Frame(stream="cam0", seq=1, t_capture=0.0, width=4, height=3, jpeg=b"not a jpeg"))
    decode_new_frames(state, images, counters, now=2.0)
    assert counters == {"frames_shown": 1, "bad_jpeg": 1}
    assert abs(int(images["cam0"].mean()) - 90) <= 2


def test_display_fps_counts_frames_shown_over_the_last_seconds():
    meter = RateMeter(window=2.0)
    assert meter.rate(0.0) == 0.0
    for i in range(31):
        meter.tick(10.0 + i / 15)  # 15 frames a second for two seconds
    assert meter.rate(12.0) == pytest.approx(15.0)
    assert meter.rate(20.0) == 0.0  # the stream stopped: the rate falls to 0


def test_no_display_is_reported_before_opencv_could_abort():
    assert display_problem({}, "linux") == "DISPLAY is not set"
    assert "not of the form" in (display_problem({"DISPLAY": "nonsense"}, "linux") or "")
    assert display_problem({}, "win32") is None
    assert display_problem({}, "darwin") is None


def listening(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind(address)
    s.listen(1)
    return s


def test_display_check_connects_to_the_x_server_socket():
    # An X server's local socket (abstract, as Linux servers offer) and its TCP port 6000+N,
    # stood in for by plain listening sockets on display numbers no one uses.
    for _ in range(50):
        n = random.randint(5000, 9000)
        try:
            local = listening(socket.AF_UNIX, f"\0/tmp/.X11-unix/X{n}")
        except OSError:
            continue
        try:
            remote = listening(socket.AF_INET, ("127.0.0.1", 6000 + n))
        except OSError:
            local.close()
            continue
        break
    else:
        pytest.fail("no free display number found")
    try:
        assert display_problem({"DISPLAY": f":{n}"}, "linux") is None
        assert display_problem({"DISPLAY": f":{n}.0"}, "linux") is None
        assert display_problem({"DISPLAY": f"127.0.0.1:{n}"}, "linux") is None
    finally:
        local.close()
        remote.close()
    problem = display_problem({"DISPLAY": f":{n}"}, "linux")
    assert problem and problem.startswith(f"cannot reach the X server of DISPLAY=:{n}")
    assert (display_problem({"DISPLAY": f"127.0.0.1:{n}"}, "linux") or "").startswith("cannot reach")
    assert not os.path.exists(f"/tmp/.X11-unix/X{n}")
