"""npz batching, drift.csv, whole-file JSON, and reading a run back the seed's way."""

import csv
import json

import numpy as np
import pytest

from encoders.logging_utils import load_run_embeddings
from encoders.services.recorder.runfiles import DriftCsv, EmbeddingBatches, write_json


def unit_vectors(n, dim=8, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_batches(folder, vectors, times, seqs, interval):
    batches = EmbeddingBatches(folder / "embeddings", interval)
    written = [batches.add(v, t, s) for v, t, s in zip(vectors, times, seqs, strict=False)]
    final = batches.flush()
    return batches, written, final


def test_a_file_every_interval_and_the_rest_at_the_end(tmp_path):
    vectors = unit_vectors(10)
    batches, written, final = write_batches(tmp_path, vectors, np.arange(10) * 0.1 + 1e9, range(100, 110), 4)
    assert [p.name if p else None for p in written] == [
        None,
        None,
        None,
        "batch_0000.npz",
        None,
        None,
        None,
        "batch_0001.npz",
        None,
        None,
    ]
    assert final.name == "batch_0002.npz"
    assert batches.written == 3 and batches.rows_written == 10
    with np.load(final) as data:
        assert data["embeddings"].shape == (2, 8) and data["embeddings"].dtype == np.float32
        assert data["timestamps"].dtype == np.float64
        assert data["indices"].dtype == np.int64 and list(data["indices"]) == [108, 109]
    assert batches.flush() is None  # nothing held: no empty file
    assert sorted(p.name for p in (tmp_path / "embeddings").iterdir()) == [
        "batch_0000.npz",
        "batch_0001.npz",
        "batch_0002.npz",
    ]


def test_round_trip_through_the_seed_import(tmp_path):
    vectors = unit_vectors(25, dim=16)
    times = 1.7e9 + np.arange(25) / 30.0
    seqs = np.arange(25) * 3
    write_batches(tmp_path, vectors, times, seqs, 10)
    emb, ts, idx = load_run_embeddings(tmp_path)
    assert emb.dtype == np.float32 and ts.dtype == np.float64 and idx.dtype == np.int64
    np.testing.assert_array_equal(emb, vectors)
    np.testing.assert_array_equal(ts, times)  # float64 kept exactly
    np.testing.assert_array_equal(idx, seqs)


def test_batches_are_concatenated_in_numeric_order(tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    for n in (10000, 2, 9999):  # "batch_10000" sorts before "batch_9999" as text
        np.savez(
            folder / f"batch_{n:04d}.npz",
            embeddings=np.full((1, 2), n, np.float32),
            timestamps=np.array([float(n)]),
            indices=np.array([n]),
        )
    _, _, idx = load_run_embeddings(tmp_path)
    assert list(idx) == [2, 9999, 10000]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folder"):
        load_run_embeddings(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="has no embeddings"):
        load_run_embeddings(tmp_path)


def test_several_streams_need_a_name(tmp_path):
    for i, name in enumerate(("cam0", "cam1")):
        write_batches(tmp_path / name, unit_vectors(3, seed=i), [1.0, 2.0, 3.0], [i, i + 1, i + 2], 2)
    with pytest.raises(ValueError, match=r"several streams \(cam0, cam1\)"):
        load_run_embeddings(tmp_path)
    _, _, idx = load_run_embeddings(tmp_path, stream="cam1")
    assert list(idx) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"no stream 'cam9'.*cam0, cam1"):
        load_run_embeddings(tmp_path, stream="cam9")


def test_streams_listed_in_config_json_include_the_root_one(tmp_path):
    write_batches(tmp_path, unit_vectors(2), [1.0, 2.0], [0, 1], 5)
    write_batches(tmp_path / "cam1", unit_vectors(3), [1.0, 2.0, 3.0], [7, 8, 9], 5)
    write_json(tmp_path / "config.json", {"streams": {"cam0": ".", "cam1": "cam1"}})
    assert list(load_run_embeddings(tmp_path, stream="cam0")[2]) == [0, 1]
    assert list(load_run_embeddings(tmp_path, stream="cam1")[2]) == [7, 8, 9]
    with pytest.raises(ValueError, match="several streams"):
        load_run_embeddings(tmp_path)


def test_drift_csv(tmp_path):
    path = tmp_path / "drift.csv"
    out = DriftCsv(path)
    out.write(1700000000.1234567, 0, None, None)
    out.write(1700000000.2, 1, 0.875, 0.125)
    out.close()
    rows = list(csv.reader(path.open()))
    assert rows == [
        ["timestamp", "frame", "similarity", "drift"],
        ["1700000000.123457", "0", "", ""],
        ["1700000000.200000", "1", "0.875", "0.125"],
    ]


def test_write_json_replaces_whole_files(tmp_path):
    write_json(tmp_path / "x.json", {"a": 1})
    write_json(tmp_path / "x.json", {"b": 2})
    assert json.loads((tmp_path / "x.json").read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
