"""Batches in columns (protocol 3: Results, Records, Acks): each part checked by its length, each
column by its values, the header's tables and row keys against the rows; of/rows/many."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from encoders.shared import messages
from encoders.shared.messages import (
    Ack,
    Acks,
    DecodeError,
    Embedding,
    MetricsRecord,
    Records,
    Results,
    Skipped,
)

from .test_messages import same_rows


def embedding(seq: int, stream: str = "cam0", **kw) -> Embedding:
    fields = {"t_capture": 1.0 + seq, "worker": "w1", "model": "m", "t_encoded": 2.0,
              "vector": np.full(4, seq + 1, np.float32) / 2, "thumbnail": b"t" * seq, **kw}  # fmt: skip
    return Embedding(stream, seq, **fields)


def record(seq: int, stream: str = "cam0", **kw) -> MetricsRecord:
    fields = {"t_capture": 1.0, "t_encoded": 2.0, "worker": "w1", "model": "m", "similarity": 0.5, "drift": 0.5,
              "vector": np.ones(4, np.float32), "counts": {"embedded": seq}, **kw}  # fmt: skip
    return MetricsRecord(stream, seq, **fields)


def wire(msg: messages.Message) -> list[bytes]:
    return [bytes(p) for p in messages.encode(msg)]


def decoded(parts: list[bytes]) -> messages.Message:
    return messages.decode(parts)


def header(parts: list[bytes]) -> dict:
    return msgpack.unpackb(parts[0])


def with_header(parts: list[bytes], **fields: object) -> list[bytes]:
    return [msgpack.packb({**header(parts), **fields}, use_bin_type=True), *parts[1:]]


COLUMNS_PART = 1  # a batch's part of columns: right after the header


def with_column(parts: list[bytes], cls: type[messages.Batch], name: str, values: list, dtype: str) -> list[bytes]:
    """The parts with column ``name``'s values replaced by ``values`` (as many as the batch's rows)."""
    out = list(parts)
    at, length = messages.column_span(cls, name, len(values))
    data = np.array(values, dtype).tobytes()
    assert len(data) == length
    columns = out[COLUMNS_PART]
    out[COLUMNS_PART] = columns[:at] + data + columns[at + length :]
    return out


def per_column(parts: list[bytes], cls: type[messages.Batch]) -> list[bytes]:
    """A batch as it travelled before its columns shared one part: one part a column, in COLUMNS order."""
    n = header(parts)["n"]
    columns = parts[COLUMNS_PART]
    spans = {c.name: messages.column_span(cls, c.name, n) for c in cls.COLUMNS}
    each = [columns[at : at + length] for at, length in (spans[c.name] for c in cls.COLUMNS)]
    return [parts[0], *each, *parts[COLUMNS_PART + 1 :]]


# -- round trips ----------------------------------------------------------------------------------


def test_results_round_trip_with_none_levels_skips_and_empty_thumbnails():
    rows: list[Embedding | Skipped] = [
        embedding(0, brightness=None, contrast=None),
        Skipped("cam1", 5, "w1", "corrupt JPEG"),
        embedding(2, "cam1", brightness=12.5, contrast=0.0, thumbnail=b""),
    ]
    back = decoded(wire(Results.of(rows)))
    assert isinstance(back, Results) and back.n == 3 and back.vectors.shape == (2, 4)
    assert same_rows(back.rows(), rows)
    assert back.streams == {"cam0": 0, "cam1": 1} and back.reasons == {"1": "corrupt JPEG"}


def test_an_empty_results_and_an_all_skipped_one_round_trip():
    assert decoded(wire(Results.of([]))).rows() == []  # type: ignore[attr-defined]
    rows = [Skipped("cam0", i, "w1", f"model error {i}") for i in range(3)]
    back = decoded(wire(Results.of(rows)))
    assert back.rows() == rows and back.vectors.shape == (0, 0)  # type: ignore[attr-defined]


def test_records_round_trip_with_none_values_absent_counts_and_events():
    rows = [
        record(
            0, similarity=None, drift=None, rolling={"count": 0, "mean": None, "std": None, "min": None, "max": None}
        ),
        record(
            1,
            rolling={"count": 1, "mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5},
            counts={"published": None},
            brightness=0.0,
            contrast=255.0,
            events={"blackout": 0.5, "frozen": None},
        ),
        record(7, worker="w2", rolling={}, counts={}, scene_change=True, thumbnail=b"jpeg", fps=30.0),
    ]
    back = decoded(wire(Records.of(rows)))
    assert isinstance(back, Records) and back.topic() == b"metrics/cam0"
    assert same_rows(back.rows(), rows)
    assert back.workers == {"w1": 0, "w2": 1} and set(back.events) == {"1"}


def test_levels_travel_as_float32():
    back = decoded(wire(Results.of([embedding(0, brightness=1 / 3)])))
    assert back.rows()[0].brightness == float(np.float32(1 / 3))  # type: ignore[attr-defined]


def test_acks_round_trip():
    acks = [Ack("cam0", -1), Ack("cam1", 7, ended=True)]
    assert decoded(wire(Acks.of(acks))).rows() == acks  # type: ignore[attr-defined]


# -- many: cut where a batch must end ---------------------------------------------------------------


def test_records_many_cuts_at_a_new_stream_and_at_the_notes_bound():
    rows = [record(i) for i in range(3)] + [record(i, "cam1") for i in range(2)]
    assert [b.n for b in Records.many(rows)] == [3, 2]
    noted = [record(i, events={"frozen": 1.0}) for i in range(messages.MAX_NOTES + 1)]
    batches = Records.many(noted)
    assert [b.n for b in batches] == [messages.MAX_NOTES, 1]
    assert same_rows([r for b in batches for r in decoded(wire(b)).rows()], noted)  # type: ignore[attr-defined]


def test_results_many_keeps_skips_with_their_worker_s_batch_and_cuts_at_another_model():
    rows: list[Embedding | Skipped] = [embedding(0), Skipped("cam0", 1, "w1", "bad"), embedding(2)]
    rows.append(embedding(3, model="other"))
    batches = Results.many(rows)
    assert [b.n for b in batches] == [3, 1] and batches[1].model == "other"
    assert same_rows([r for b in batches for r in b.rows()], rows)


def test_many_keeps_a_part_within_its_bound():
    big = b"x" * (messages.BATCH_PART_MAX // 2)
    assert [b.n for b in Records.many([record(i, thumbnail=big) for i in range(3)])] == [2, 1]


# -- every bound refused ----------------------------------------------------------------------------


def test_columns_of_the_wrong_length_are_refused():
    parts = wire(Results.of([embedding(0), embedding(1)]))
    short = list(parts)
    short[COLUMNS_PART] = short[COLUMNS_PART][:-1]
    with pytest.raises(DecodeError, match="results: columns of 61 bytes, for 2 rows of 31"):
        decoded(short)
    with pytest.raises(DecodeError, match="results: columns of 62 bytes, for 3 rows of 31"):
        decoded(with_header(parts, n=3))


def test_columns_share_one_part_each_aligned_and_read_without_a_copy():
    parts = messages.encode(Records.of([record(i) for i in range(3)]))
    assert len(parts) == 1 + 1 + len(Records.BLOBS) + 1  # header, columns, blobs, vectors
    back = messages.decode(parts)
    assert isinstance(back, Records)
    for name, values in back.columns.items():
        assert values.ctypes.data % values.dtype.itemsize == 0, name  # each column starts aligned
        assert not values.flags.owndata, name  # a view of the part


@pytest.mark.parametrize("kind", [Results, Records])
def test_a_batch_of_one_part_a_column_still_decodes(kind):
    """What a core's spool or a recorder's left records hold from before the columns shared a part."""
    batch = Results.of([embedding(0), embedding(1)]) if kind is Results else Records.of([record(0), record(1)])
    old = per_column(wire(batch), kind)
    assert len(old) == 1 + len(kind.COLUMNS) + len(kind.BLOBS) + 1
    assert same_rows(decoded(old).rows(), batch.rows())  # type: ignore[attr-defined]
    old[1] = old[1][:-1]
    with pytest.raises(DecodeError, match=f"{kind.KIND}: column '{kind.COLUMNS[0].name}' of"):
        decoded(old)


@pytest.mark.parametrize(
    "name, values, dtype, why",
    [
        ("t_capture", [math.nan, 1.0], "<f8", "expected finite values"),
        ("t_capture", [-1.0, 1.0], "<f8", r"expected values in \[0, "),
        ("brightness", [math.inf, 1.0], "<f4", "expected finite values or NaN"),
        ("brightness", [255.5, 1.0], "<f4", r"expected values in \[0, 255\]"),
        ("seq", [-1, 1], "<i8", r"expected values in \[0, "),
        ("outcome", [2, 0], "u1", r"expected values in \[0, 1\]"),
    ],
)
def test_a_column_value_out_of_its_bounds_is_refused(name, values, dtype, why):
    parts = with_column(wire(Results.of([embedding(0), embedding(1)])), Results, name, values, dtype)
    with pytest.raises(DecodeError, match=f"results: column '{name}': {why}"):
        decoded(parts)


@pytest.mark.parametrize(
    "name, values, dtype, why",
    [
        ("similarity", [math.inf, 0.5], "<f8", "expected finite values or NaN"),
        ("drift", [2.5, 0.5], "<f8", r"expected values in \[0, 2\]"),
        ("counts_embedded", [-2, 0], "<i8", r"expected values in \[-1, "),
        ("counts_published", [-3, 0], "<i8", r"expected values in \[-2, "),
        ("fps", [math.nan, 0.0], "<f8", "expected finite values"),
        ("scene_change", [1, 2], "u1", r"expected values in \[0, 1\]"),
    ],
)
def test_a_record_column_out_of_its_bounds_is_refused(name, values, dtype, why):
    parts = with_column(wire(Records.of([record(0), record(1)])), Records, name, values, dtype)
    with pytest.raises(DecodeError, match=f"records: column '{name}': {why}"):
        decoded(parts)


@pytest.mark.parametrize("n", [messages.MAX_BATCH + 1, -1, True, 1.0, None])
def test_n_past_the_bound_or_not_an_int_is_refused(n):
    with pytest.raises(DecodeError, match=r"results: n=.*expected an int in \[0, 4096\]"):
        decoded(with_header(wire(Results.of([embedding(0)])), n=n))


def test_n_at_the_bound_decodes():
    rows: list[Embedding | Skipped] = [Skipped("cam0", i, "w1", "r") for i in range(messages.MAX_NOTES)]
    rows += [embedding(i, vector=np.ones(1, np.float32)) for i in range(messages.MAX_NOTES, messages.MAX_BATCH)]
    (batch,) = Results.many(rows)
    assert decoded(wire(batch)).n == messages.MAX_BATCH  # type: ignore[attr-defined]


def test_vectors_of_the_wrong_length_or_not_finite_are_refused():
    parts = wire(Results.of([embedding(0), Skipped("cam0", 1, "w1", "r")]))
    with pytest.raises(DecodeError, match="results: vectors of 16 bytes, for 1 rows of dim=5"):
        decoded(with_header(parts, dim=5))
    with pytest.raises(DecodeError, match=r"results: dim=True"):
        decoded(with_header(parts, dim=True))
    bad = list(parts)
    bad[-1] = np.array([1, 2, math.nan, 3], np.float32).tobytes()
    with pytest.raises(DecodeError, match="results: vectors: expected finite values"):
        decoded(bad)


def test_thumbnails_that_do_not_add_up_to_their_lengths_are_refused():
    parts = wire(Results.of([embedding(2), embedding(3)]))
    bad = list(parts)
    bad[COLUMNS_PART + 1] += b"x"
    with pytest.raises(DecodeError, match="results: thumbnails of 6 bytes, their lengths say 5"):
        decoded(bad)


def test_a_missing_or_extra_part_is_refused():
    parts = wire(Records.of([record(0)]))
    with pytest.raises(DecodeError, match=r"records: expected \d+ parts"):
        decoded(parts[:-1])
    with pytest.raises(DecodeError, match=r"records: expected \d+ parts"):
        decoded([*parts, b""])


def test_the_header_s_tables_and_row_keys_must_agree_with_the_rows():
    results = wire(Results.of([embedding(0), Skipped("cam1", 1, "w1", "bad")]))
    cases = [
        (with_header(results, streams={"cam0": 0, "cam1": 2}), "its streams are not numbered 0 to 1"),
        (with_header(results, streams={"cam0": 0}), "a row's stream number 1 is not in its table of 1"),
        (with_header(results, reasons={}), "its reasons are not exactly its skipped rows'"),
        (with_header(results, reasons={"1": "bad", "0": "not skipped"}), "its reasons are not exactly"),
        (with_header(results, reasons={"01": "bad"}), "field 'reasons'"),  # a row key without leading zeros
        (with_column(results, Results, "thumbnail", [0, 1], "<u4"), "thumbnails of 0 bytes"),
    ]
    records = wire(Records.of([record(0), record(1, worker="w2", events={"frozen": 2.0})]))
    cases += [
        (with_header(records, events={"2": {"frozen": 2.0}}), "events of row 2, of 2 rows"),
        (with_header(records, events={"4096": {}}), "events of row 4096"),
        (with_header(records, events={"40960": {}}), "field 'events'"),  # past any row number
        (with_header(records, workers={"w1": 0, "w2": 0}), "its workers are not numbered 0 to 1"),
        (with_column(records, Records, "seq", [1, 1], "<i8"), "its seqs do not rise"),
    ]
    for parts, why in cases:
        with pytest.raises(DecodeError, match=why):
            decoded(parts)
    skipped_with_thumb = Results.of([Skipped("cam0", 1, "w1", "bad")])
    skipped_with_thumb.columns["thumbnail"] = np.array([1], "<u4")
    skipped_with_thumb.blobs["thumbnail"] = b"x"
    with pytest.raises(DecodeError, match="a skipped row has a thumbnail"):
        decoded(wire(skipped_with_thumb))


def test_a_protocol_2_hello_still_decodes_and_is_refused_by_its_protocol():
    from encoders.shared.session import hello_problem

    old = decoded(wire(messages.Hello("worker", "w", 2, capacity=2, model="m", dim=4)))
    said = hello_problem(old)  # type: ignore[arg-type]
    assert said == f"protocol 2, but this core speaks protocol {messages.PROTOCOL}: run the same encoders version"
    assert messages.PROTOCOL == 3


def test_a_short_column_is_checked_value_by_value_with_numpys_verdict():
    """Columns of a few values (a batch of one or two records) are checked in Python, longer ones
    with numpy: the same values must get the same verdict either way (the same values, repeated
    past SHORT_COLUMN, take numpy's way)."""
    from encoders.shared.messages import SHORT_COLUMN, Records, Results

    rng = np.random.default_rng(7)
    special = [0.0, -0.0, 1.0, -1.0, 255.0, 255.5, 2.0, 2.5, -2.0, -3.0, np.nan, np.inf, -np.inf, 1e300]
    for col in {c.name: c for c in (*Results.COLUMNS, *Records.COLUMNS)}.values():
        dtype = np.dtype(col.dtype)
        for _ in range(60):
            n = int(rng.integers(1, SHORT_COLUMN + 1))
            picked = rng.choice(np.array(special), n)
            if dtype.kind != "f":
                picked = picked[np.isfinite(picked)]
                info = np.iinfo(dtype)
                picked = np.clip(picked, info.min, info.max)
                if picked.size == 0:
                    continue
            values = picked.astype(dtype)
            short, long = col.problem(values), col.problem(np.tile(values, SHORT_COLUMN + 1))
            assert (short is None) == (long is None), (col.name, values, short, long)


# -- the data link (step 4): Captured, Assigned, Workers, Pictures, Preview, WantPictures ----------


def _pictures() -> messages.Pictures:
    frames = [messages.Frame("cam", 7, 1.5, 640, 480, b"\xff\xd8one"), messages.Frame("cam", 9, 2.5, 64, 48, b"two")]
    return messages.Pictures.of("cam", frames)


def test_pictures_travel_one_part_a_row_and_come_back_as_frames():
    parts = messages.encode(_pictures())
    assert parts[-2:] == [b"\xff\xd8one", b"two"]  # the JPEGs as they are, after the columns
    back = messages.decode(parts)
    assert isinstance(back, messages.Pictures)
    assert [(f.seq, f.t_capture, f.width, f.height, f.jpeg) for f in back.frames()] == [
        (7, 1.5, 640, 480, b"\xff\xd8one"),
        (9, 2.5, 64, 48, b"two"),
    ]


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (lambda parts: parts[:-1], "pictures, for 2 rows"),
        (lambda parts: [*parts, b"three"], "pictures, for 2 rows"),
        (lambda parts: [*parts[:-1], b"twoo"], "length is not its row's bytes"),
    ],
)
def test_pictures_whose_parts_do_not_match_their_rows_do_not_decode(spoil, why):
    with pytest.raises(messages.DecodeError, match=why):
        messages.decode(spoil(messages.encode(_pictures())))


def test_captured_ids_are_distinct_and_assigned_rows_come_back():
    note = messages.CaptureNote(1, 2.0, 3, 4, 5)
    captured = messages.decode(messages.encode(messages.Captured.of([note])))
    assert isinstance(captured, messages.Captured) and captured.rows() == [note]
    with pytest.raises(messages.DecodeError, match="not distinct"):
        messages.decode(messages.encode(messages.Captured.of([note, note])))
    rows = [messages.Assignment(1, 10, 2), messages.Assignment(2, 11, messages.NO_WORKER)]
    assigned = messages.decode(messages.encode(messages.Assigned.of(rows)))
    assert isinstance(assigned, messages.Assigned) and assigned.rows() == rows


def test_workers_names_addresses_and_keys_and_refuses_a_key_that_is_not_one():
    msg = messages.Workers({"3": {"address": "tcp://10.0.0.5:5560", "key": "k" * 40}}, {"k" * 40: "ingest cam"})
    assert messages.decode(messages.encode(msg)) == msg
    with pytest.raises(messages.DecodeError, match="admit"):
        messages.decode(messages.encode(messages.Workers({}, {"short": "x"})))
    with pytest.raises(messages.DecodeError, match="links"):
        messages.decode(messages.encode(messages.Workers({"0": {"address": "", "key": ""}})))


def test_a_workers_admit_list_has_a_generation_the_worker_answers_with_admits():
    msg = messages.Workers(admit={"k" * 40: "ingest cam"}, generation=3)
    assert messages.decode(messages.encode(msg)) == msg
    assert messages.decode(messages.encode(messages.Admits(3))) == messages.Admits(3)
    with pytest.raises(messages.DecodeError, match="generation"):
        messages.decode(messages.encode(messages.Admits(-1)))
    with pytest.raises(messages.DecodeError, match="generation"):
        messages.decode(messages.encode(messages.Workers(generation=-1)))
