"""ENCODERS_RUNTIME=none (services/encoder/embedder.py): vectors from a hash of each JPEG, and the
preprocessing of ViT-B-32. The worker's use of it: tests/unit/test_encoder_worker.py; without
torch, and through a real core: tests/integration/test_runtime_none.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from encoders.services.encoder.config import EncoderConfig
from encoders.services.encoder.embedder import NoModel, unit_vector
from encoders.services.encoder.preprocess import CorruptFrame
from encoders.shared.settings import SettingsError


def jpeg(color, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def test_a_jpegs_vector_is_a_unit_vector_of_the_length_asked_the_same_for_the_same_bytes():
    a, b = jpeg("red"), jpeg("blue")
    v = unit_vector(a)
    assert v.shape == (512,) and v.dtype == np.float32
    assert float(np.linalg.norm(v)) == pytest.approx(1, abs=1e-6)
    assert np.array_equal(v, unit_vector(bytes(a)))  # the same bytes: the same vector, whoever computes it
    assert abs(float(v @ unit_vector(b))) < 0.3  # other bytes: all but orthogonal
    assert not np.array_equal(unit_vector(a + b"\0"), v)  # one byte more is another JPEG
    assert unit_vector(a, 7).shape == (7,) and float(np.linalg.norm(unit_vector(a, 7))) == pytest.approx(1, abs=1e-6)


def test_no_model_embeds_a_batch_by_its_jpegs_and_names_itself_after_its_length():
    none = NoModel(dim=64)
    assert (none.name, none.dim) == ("none/64", 64)
    jpegs = [jpeg("red", (640, 480)), jpeg("green", (1920, 1080)), jpeg("red", (640, 480))]
    arrays = [none.pre.load(j) for j in jpegs]
    assert all(a.shape == (224, 224, 3) for a in arrays)  # decoded as for ViT-B-32
    rows = none.embed_frames(jpegs, arrays)
    assert rows.shape == (3, 64) and rows.dtype == np.float32
    assert np.array_equal(rows[0], rows[2]) and np.array_equal(rows[1], unit_vector(jpegs[1], 64))
    assert none.embed_frames([], []).shape == (0, 64)


def test_the_runtime_and_its_length_are_settings():
    cfg = EncoderConfig.from_env({"ENCODERS_RUNTIME": "none", "ENCODERS_NONE_DIM": "768"})
    assert (cfg.runtime, cfg.none_dim) == ("none", 768)
    assert EncoderConfig().none_dim == 512  # ViT-B-32's
    with pytest.raises(SettingsError):
        EncoderConfig.from_env({"ENCODERS_NONE_DIM": "0"})
    assert EncoderConfig().none_decode and not EncoderConfig.from_env({"ENCODERS_NONE_DECODE": "0"}).none_decode


def test_without_decoding_a_jpeg_is_checked_for_its_markers_only():
    loader = NoModel(decode=False).pre
    good = jpeg("red", (640, 480))
    assert loader.load(good).size == 0 and loader.load(good + b"\0" * 16).size == 0  # no picture: no levels
    for bad in (good[:-2], b"\0" + good, good[: len(good) // 2], b""):
        with pytest.raises(CorruptFrame):
            loader.load(bad)
