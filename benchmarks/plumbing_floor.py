"""The floor of the plumbing benchmark: a bare pyzmq forwarder that moves a frame as the core does,
with nothing else (no decoding, no sessions, no order, no drift, no bookkeeping), and its peers.

    python benchmarks/plumbing_floor.py forwarder --core EP --frames EP --metrics EP
    python benchmarks/plumbing_floor.py feeder --core EP --stream cam0 --jpeg FILE
    python benchmarks/plumbing_floor.py worker --core EP
    python benchmarks/plumbing_floor.py sink --core EP --frames EP

The forwarder binds a ROUTER and two PUBs, as the core does, and makes the core's sends as protocol 3
makes them: per frame, the frame on the frames publisher and to a worker; per worker batch, its
results on the metrics publisher (one message per stream in it, as a Records) and to the sink (the
recorder's place), and one credit per stream back to its feeder (a lossless ingest's). A feeder
(an ingest's place) sends its JPEG against credit (16 at a time); a worker answers the frames
waiting for it (up to a batch of 8) with one message of prepared results of a real one's size (a
512-float vector and a thumbnail a row, as a Results), doing no work; the sink takes the results
and, as the recorder does, subscribes to the frames. Headers are opaque
bytes of a real header's size. With ENCODERS_KEYS every link is CurveZMQ with the keys of
`encoders keys init` (no ZAP: the encryption's cost, not the allow-list's).

On SIGTERM the forwarder grants no more credit, waits for the frames out to come back, publishes
each stream's end (``eos/STREAM``: a msgpack map with ``stream`` and ``counts``, as the core's
EndOfStream header has them) and exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
import time
from collections import deque
from pathlib import Path

import msgpack
import numpy as np
import zmq
import zmq.auth

CAPACITY = 16  # frames a worker holds, as a worker with batches of 8 offers
WINDOW = 16  # captures a feeder may have in flight
FRAME_HEADER = 100  # bytes: about what the core's Frame header takes
RESULT_HEADER = 300  # a Results' (its rows' numbers are columns, parts of their own: ROW bytes a row)
ROW = 40  # a result's columns: stream, seq, times, outcome, levels, thumbnail length
BATCH = 8  # frames a worker answers at once, at most
THUMBNAIL = 5000  # a 160 px thumbnail's


def keyed(sock: zmq.Socket, role: str) -> None:
    """CurveZMQ on ``sock`` when ENCODERS_KEYS names a key folder: the core's pair, else ``role``'s."""
    folder = os.environ.get("ENCODERS_KEYS", "")
    if not folder:
        return
    if role == "core":
        public, secret = zmq.auth.load_certificate(Path(folder) / "core.key_secret")
        sock.curve_server = True
    else:
        public, secret = zmq.auth.load_certificate(Path(folder) / f"{role}.key_secret")
        server, _ = zmq.auth.load_certificate(Path(folder) / "core.key")
        sock.curve_serverkey = server
    sock.curve_publickey, sock.curve_secretkey = public, secret


def socket(ctx: zmq.Context, kind: int, role: str, endpoint: str, *, bind: bool) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    keyed(sock, role)
    (sock.bind if bind else sock.connect)(endpoint)
    return sock


def forwarder(args: argparse.Namespace) -> int:
    ctx = zmq.Context()
    router = socket(ctx, zmq.ROUTER, "core", args.core, bind=True)
    frames = socket(ctx, zmq.PUB, "core", args.frames, bind=True)
    metrics = socket(ctx, zmq.PUB, "core", args.metrics, bind=True)
    feeders: dict[bytes, bytes] = {}  # identity -> stream
    by_stream: dict[bytes, bytes] = {}  # stream -> the feeder's identity
    held: dict[bytes, int] = {}  # worker identity -> frames it holds
    sinks: list[bytes] = []
    waiting: deque[tuple[bytes, bytes]] = deque()  # (header, jpeg) with no worker free
    seq: dict[bytes, int] = {}
    published: dict[bytes, int] = {}
    embedded: dict[bytes, int] = {}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.monotonic()))

    def dispatch(header: bytes, jpeg) -> None:
        worker = max(held, key=lambda w: CAPACITY - held[w], default=None)
        if worker is None or held[worker] >= CAPACITY:
            waiting.append((header, jpeg))
            return
        held[worker] += 1
        router.send_multipart([worker, b"F", header, jpeg], copy=False)

    while not (stopping and time.monotonic() - stopping[0] > 0.2 and sum(held.values()) == 0 and not waiting):
        if stopping and time.monotonic() - stopping[0] > 5:
            break  # what is still out is counted lost
        if not router.poll(50):
            continue
        parts = router.recv_multipart(copy=False)
        who, kind = parts[0].bytes, parts[1].bytes
        if kind == b"C":
            stream = feeders[who]
            n = seq[stream]
            seq[stream] = n + 1
            published[stream] += 1
            header = struct.pack("<Q", n) + stream.ljust(FRAME_HEADER - 8, b" ")
            frames.send_multipart([b"frame/" + stream, header, parts[3]], copy=False)
            dispatch(header, parts[3])
        elif kind == b"R":
            headers = parts[2].bytes  # the frames' headers end to end: one a row
            rows = [headers[i : i + FRAME_HEADER] for i in range(0, len(headers), FRAME_HEADER)]
            held[who] -= len(rows)
            per_stream: dict[bytes, int] = {}
            for header in rows:
                stream = header[8:].rstrip(b" ")
                per_stream[stream] = per_stream.get(stream, 0) + 1
            for stream, n in per_stream.items():
                embedded[stream] += n
                # A Records' header as the benchmark's subscriber reads it (its kind and rows), of a real one's size.
                header = msgpack.packb({"k": "records", "n": n, "pad": "r" * RESULT_HEADER})
                metrics.send_multipart([b"metrics/" + stream, header, *parts[4:]], copy=False)
                if not stopping:
                    router.send_multipart([by_stream[stream], b"K", str(n).encode()])
            for sink in sinks:
                router.send_multipart([sink, b"M", *parts[3:]], copy=False)
            for _ in range(len(rows)):
                if waiting:
                    dispatch(*waiting.popleft())
        elif kind == b"H":
            role = parts[2].bytes
            if role == b"feeder":
                stream = parts[3].bytes
                feeders[who], by_stream[stream] = stream, who
                seq.setdefault(stream, 0)
                published.setdefault(stream, 0)
                embedded.setdefault(stream, 0)
                router.send_multipart([who, b"K", str(WINDOW).encode()])
            elif role == b"worker":
                held[who] = 0
                while waiting and held[who] < CAPACITY:
                    dispatch(*waiting.popleft())
            else:
                sinks.append(who)
    for stream, n in published.items():
        counts = {
            "published": n,
            "embedded": embedded[stream],
            "dropped": 0,
            "skipped": 0,
            "lost": n - embedded[stream],
        }
        metrics.send_multipart([b"eos/" + stream, msgpack.packb({"stream": stream.decode(), "counts": counts})])
    time.sleep(0.2)  # the subscribers take them
    ctx.destroy(linger=0)
    return 0


def feeder(args: argparse.Namespace) -> int:
    ctx = zmq.Context()
    sock = socket(ctx, zmq.DEALER, "ingest", args.core, bind=False)
    jpeg = Path(args.jpeg).read_bytes()
    header = b"c" * FRAME_HEADER
    sock.send_multipart([b"H", b"feeder", args.stream.encode()])
    while True:
        parts = sock.recv_multipart()
        if parts[0] == b"K":
            for _ in range(int(parts[1])):
                sock.send_multipart([b"C", header, jpeg], copy=False)


def worker(args: argparse.Namespace) -> int:
    ctx = zmq.Context()
    sock = socket(ctx, zmq.DEALER, "worker", args.core, bind=False)
    vector = (np.ones(512, np.float32) / np.float32(np.sqrt(512))).tobytes()
    result, thumbnail = b"r" * RESULT_HEADER, b"t" * THUMBNAIL
    sock.send_multipart([b"H", b"worker"])
    while True:
        headers = []
        parts = sock.recv_multipart(copy=False)
        while True:
            if parts[0].bytes == b"F":
                headers.append(parts[1].bytes)
            if len(headers) >= BATCH or not sock.poll(0):
                break
            parts = sock.recv_multipart(copy=False)
        if headers:
            n = len(headers)
            sock.send_multipart(
                [b"R", b"".join(headers), result, b"c" * (ROW * n), vector * n, thumbnail * n], copy=False
            )


def sink(args: argparse.Namespace) -> int:
    ctx = zmq.Context()
    sock = socket(ctx, zmq.DEALER, "recorder", args.core, bind=False)
    sub = socket(ctx, zmq.SUB, "recorder", args.frames, bind=False)
    sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
    sock.send_multipart([b"H", b"sink"])
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(sub, zmq.POLLIN)
    while True:
        for s, _ in poller.poll():
            s.recv_multipart(copy=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("forwarder", "feeder", "worker", "sink"))
    parser.add_argument("--core", required=True)
    parser.add_argument("--frames", default="")
    parser.add_argument("--metrics", default="")
    parser.add_argument("--stream", default="cam0")
    parser.add_argument("--jpeg", default="")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return {"forwarder": forwarder, "feeder": feeder, "worker": worker, "sink": sink}[args.role](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
