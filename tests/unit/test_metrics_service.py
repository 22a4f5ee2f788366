"""MetricsService on inproc sockets: records in order to viewers and recorder, the recorder's backlog held."""

from __future__ import annotations

import logging
import threading

import numpy as np
import zmq

from encoders.services.metrics.service import MetricsService
from encoders.services.metrics.streams import Streams
from encoders.shared import zmqio
from encoders.shared.messages import Embedding, EndOfStream, MetricsRecord, Stats, StreamStart

from ..conftest import Sockets


def unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


class Rig:
    """A MetricsService and the peers around it: a worker's PUSH, a viewer's SUB."""

    def __init__(self, sockets: Sockets, name: str, exit_after_streams: int = 0):
        self.sockets, self.records_addr = sockets, f"inproc://{name}-records"
        inbox = sockets.bind(zmq.PULL, f"inproc://{name}-in")
        pub = sockets.bind(zmq.PUB, f"inproc://{name}-pub")
        records = sockets.bind(zmq.PUSH, self.records_addr)
        self.service = MetricsService(Streams(10, 1.0), inbox, pub, records, exit_after_streams=exit_after_streams)
        self.worker = sockets.connect(zmq.PUSH, f"inproc://{name}-in")
        self.viewer = sockets.connect(zmq.SUB, f"inproc://{name}-pub", subscribe=[b""])

    def send_stream(self, n: int) -> None:
        zmqio.send(self.worker, StreamStart("cam0", 0))
        for seq in range(n):
            zmqio.send(self.worker, Embedding("cam0", seq, float(seq), "w", "m", vector=unit(1, seq)))
        zmqio.send(self.worker, EndOfStream("cam0", n - 1, {"published": n}))

    def recorder(self) -> zmq.Socket:
        return self.sockets.connect(zmq.PULL, self.records_addr)


def drain(sock: zmq.Socket, topic: bool = False) -> list:
    out = []
    while sock.poll(100):
        out.append(zmqio.receive(sock, topic=topic)[0])
    return out


def test_records_go_out_in_order_and_wait_for_a_recorder(sockets, caplog):
    rig = Rig(sockets, "wait", exit_after_streams=1)
    service = rig.service
    rig.send_stream(5)
    service.take_waiting(1000)
    service.release()
    caplog.clear()  # only what flushing says
    with caplog.at_level(logging.WARNING, "encoders.metrics"):
        service.flush_backlog()
        service.flush_backlog()  # the warning is rate-limited: once, not once per try
    # No recorder yet: the 5 records and the stream's end are held here.
    assert len(service.backlog) == 6 and service.counters["records"] == 5
    assert [r.message for r in caplog.records] == ["recorder not connected or not keeping up: holding 6 records"]
    assert not service.done()  # the stream ended, but its records have not all reached a recorder

    published = drain(rig.viewer, topic=True)
    assert [m.seq for m in published if isinstance(m, MetricsRecord)] == [0, 1, 2, 3, 4]
    recorder = rig.recorder()
    got: list = []
    while service.backlog or recorder.poll(100):
        service.flush_backlog()
        got += drain(recorder)
    assert [m.seq for m in got if isinstance(m, MetricsRecord)] == [0, 1, 2, 3, 4]
    assert isinstance(got[-1], EndOfStream) and got[-1].counts["embedded"] == 5
    assert service.done()
    service.close()


def test_run_stops_once_the_streams_asked_for_have_ended(sockets):
    rig = Rig(sockets, "run", exit_after_streams=1)
    recorder = rig.recorder()
    rig.send_stream(3)
    got: list = []
    runner = threading.Thread(target=rig.service.run, args=(threading.Event(),))
    runner.start()
    while runner.is_alive() or recorder.poll(0):
        got += drain(recorder)
    runner.join()
    assert [type(m).__name__ for m in got] == ["MetricsRecord"] * 3 + ["EndOfStream"]
    rig.service.close()


def test_each_streams_totals_go_to_viewers_every_second_and_to_the_log_every_ten(sockets, caplog):
    rig = Rig(sockets, "report")
    rig.send_stream(2)
    rig.service.take_waiting(1000)
    rig.service.release()
    drain(rig.viewer, topic=True)
    start = rig.service.last_log
    caplog.clear()  # only what reporting says
    with caplog.at_level(logging.INFO, "encoders.metrics"):
        rig.service.report(start + 0.5)  # too soon for either
        rig.service.report(start + 2)
        rig.service.report(start + 11)
    stats = drain(rig.viewer, topic=True)
    assert [(type(m), m.stream) for m in stats] == [(Stats, "cam0")] * 2
    assert stats[0].service == "metrics" and stats[0].counters["embedded"] == 2
    assert [r.message for r in caplog.records] == [f"cam0: {rig.service.streams.totals('cam0')}"]
    rig.service.close()


def test_at_shutdown_records_no_recorder_took_are_reported(sockets, caplog):
    rig = Rig(sockets, "finish")
    rig.send_stream(4)
    rig.service.take_waiting(1000)
    with caplog.at_level(logging.INFO, "encoders.metrics"):
        rig.service.finish(limit_s=0.1)  # releases what is due (4 records, the end), offers them for 0.1 s
    assert "5 records never reached a recorder" in caplog.text
    assert "metrics done: 4 records published, 0 bad messages" in caplog.text
    rig.service.close()
