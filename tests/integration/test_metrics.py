"""The metrics process on real sockets: order restored, drift published, bad input survived."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from encoders.shared import zmqio
from encoders.shared.messages import Dropped, Embedding, EndOfStream, MetricsRecord, StreamStart

from ..conftest import endpoint, free_port, receive


def unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.timeout(60)
def test_out_of_order_outcomes_and_garbage_in_records_in_order_out(service, sockets):
    inp, pub, rec = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    metrics = service(
        "metrics",
        "--metrics-in-bind",
        inp,
        "--metrics-bind",
        pub,
        "--records-bind",
        rec,
        "--exit-after-streams",
        "1",
        "--max-wait",
        "1",
    )
    push = sockets.connect(zmq.PUSH, inp)
    records = sockets.connect(zmq.PULL, rec)
    push.send_multipart([b"\x00 not msgpack"])
    push.send_multipart([b"\x81\xa1k\xa5frame"])  # a map without a version
    zmqio.send(push, StreamStart("cam0", 0))
    zmqio.send(push, Embedding("cam0", 2, 2.0, "w1", "m", vector=unit(0, 1)))
    zmqio.send(push, Dropped("cam0", 1))
    zmqio.send(push, Embedding("cam0", 0, 0.0, "w2", "m", vector=unit(1, 0)))
    zmqio.send(push, Embedding("cam0", 3, 3.0, "w1", "m", vector=unit(1, 1)))
    zmqio.send(push, EndOfStream("cam0", 4, {"published": 5}))  # 4 never comes: lost after the wait
    got: list = []
    while not (got and isinstance(got[-1], EndOfStream)):
        got.append(receive(records, 30))
    assert metrics.wait(20) == 0
    recs = [m for m in got if isinstance(m, MetricsRecord)]
    assert [r.seq for r in recs] == [0, 2, 3]
    assert recs[0].similarity is None
    assert recs[1].similarity == pytest.approx(0.0, abs=1e-6) and recs[1].drift == pytest.approx(1.0, abs=1e-6)
    assert recs[2].similarity == pytest.approx(0.70710678, abs=1e-6)
    assert got[-1].counts == {"embedded": 3, "dropped": 1, "skipped": 0, "lost": 1, "late": 0, "published": 5}
    assert "2 bad messages" in metrics.output()


def startup_errors(output: str) -> list[str]:
    """The ERROR lines of a service's log (the settings banner names every endpoint too)."""
    return [line for line in output.splitlines() if " ERROR " in line]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["metrics_in_bind", "metrics_bind", "records_bind"])
def test_a_port_already_bound_exits_2_with_one_line_naming_it(service, sockets, which):
    busy = endpoint(sockets.bind(zmq.PULL))  # something else holds the port
    endpoints = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("metrics_in_bind", "metrics_bind", "records_bind")}
    endpoints[which] = busy
    metrics = service("metrics", env={f"ENCODERS_{name.upper()}": ep for name, ep in endpoints.items()})
    assert metrics.wait(30) == 2
    output = metrics.output()
    (line,) = startup_errors(output)
    assert f"cannot bind {busy}" in line
    assert "Traceback" not in output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", ["tcp://nonsense", "nonsense://x"])
def test_an_endpoint_that_does_not_parse_exits_2_with_one_line_naming_it(service, bad):
    metrics = service("metrics", env={"ENCODERS_METRICS_IN_BIND": bad})
    assert metrics.wait(30) == 2
    output = metrics.output()
    (line,) = startup_errors(output)
    assert f"cannot bind {bad}" in line
    assert "Traceback" not in output
