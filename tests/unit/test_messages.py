"""The wire format: every message survives a round trip; anything else is a DecodeError."""

import msgpack
import numpy as np
import pytest

from encoders.shared import messages
from encoders.shared.messages import (
    Credit,
    DecodeError,
    Dropped,
    Embedding,
    EndOfStream,
    Frame,
    MetricsRecord,
    Skipped,
    Stats,
    StreamStart,
)

SAMPLES = [
    StreamStart("cam0", 0, "http://pi:8000/stream.mjpg"),
    Frame("cam0", 7, 1700000000.5, 640, 480, b"\xff\xd8jpeg\xff\xd9"),
    Dropped("cam0", 8),
    Skipped("cam0", 9, "w1", "corrupt JPEG"),
    Embedding("cam0", 10, 1.5, "w1", "ViT-B-32/openai", 2.0, np.arange(512, dtype=np.float32)),
    EndOfStream("cam0", 10, {"published": 11}),
    MetricsRecord(
        "cam1",
        3,
        1.0,
        1.1,
        "w2",
        "m",
        0.9,
        0.1,
        {"mean": 0.1},
        12.5,
        {"embedded": 4},
        True,
        vector=np.ones(4, np.float32),
    ),
    Credit("w1", 64),
    Stats("ingest", "cam0", {"published": 3}),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.KIND)
@pytest.mark.parametrize("with_topic", [False, True])
def test_round_trip(msg, with_topic):
    parts = [bytes(p) for p in messages.encode(msg, with_topic=with_topic)]
    back = messages.decode(parts, with_topic=with_topic)
    assert type(back) is type(msg)
    for name in msg.__dataclass_fields__:
        a, b = getattr(msg, name), getattr(back, name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


def test_binary_payload_travels_as_its_own_part_unchanged():
    jpeg = bytes(range(256)) * 10
    parts = messages.encode(Frame("cam0", 1, 0.0, 2, 2, jpeg))
    assert len(parts) == 2 and bytes(parts[1]) == jpeg
    assert jpeg not in bytes(parts[0])


def test_topic_names_kind_and_stream():
    assert messages.encode(Frame("cam3", 1, 0.0, 2, 2, b""), with_topic=True)[0] == b"frame/cam3"


@pytest.mark.parametrize(
    "parts,why",
    [
        ([], "no header"),
        ([b"\xc1not msgpack"], "not msgpack"),
        ([msgpack.packb([1, 2])], "not a map"),
        ([msgpack.packb({"v": 99, "k": "frame"})], "schema version"),
        ([msgpack.packb({"v": 1, "k": "nope"})], "unknown message kind"),
        ([msgpack.packb({"v": 1, "k": "dropped", "stream": "a"})], "missing field 'seq'"),
        (
            [msgpack.packb({"v": 1, "k": "frame", "stream": "a", "seq": 1, "t_capture": 0, "width": 1, "height": 1})],
            "expected 1 buffer",
        ),
        (
            [
                msgpack.packb(
                    {
                        "v": 1,
                        "k": "embedding",
                        "stream": "a",
                        "seq": 1,
                        "t_capture": 0,
                        "worker": "w",
                        "model": "m",
                        "dim": 4,
                    }
                ),
                b"\x00" * 12,
            ],
            "header says dim=4",
        ),
    ],
)
def test_what_does_not_decode_is_a_decode_error(parts, why):
    with pytest.raises(DecodeError, match=why):
        messages.decode(parts)
