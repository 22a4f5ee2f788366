"""The real open_clip loading code, on a small model config and a checkpoint the test wrote."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.services.encoder.model import ModelLoadError, load_encoder
from encoders.services.encoder.preprocess import CorruptFrame, decode_jpeg, load_batch


def embed(enc, jpegs):
    arrays, _ok, bad, _ = load_batch(enc.pre, jpegs)
    assert not bad
    return enc.embed_arrays(arrays)


def jpeg(color, size=(96, 72)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def test_checkpoint_loads_and_embeddings_are_unit_length(tiny_model):
    enc = load_encoder(tiny_model["ENCODERS_MODEL"], tiny_model["ENCODERS_PRETRAINED"], "cpu")
    assert enc.dim == 64 and enc.pre.size == 64
    assert enc.name == "tiny-clip/tiny-clip.pt"
    vectors = embed(enc, [jpeg("red"), jpeg("blue")])
    assert vectors.shape == (2, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_the_checkpoint_weights_are_the_ones_used(tiny_model, tmp_path):
    """Two different checkpoints of the same config give different embeddings."""
    a = load_encoder(tiny_model["ENCODERS_MODEL"], tiny_model["ENCODERS_PRETRAINED"], "cpu")
    state = torch.load(tiny_model["ENCODERS_PRETRAINED"])["state_dict"]
    other = tmp_path / "other.pt"
    torch.save(
        {"state_dict": {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}},
        other,
    )
    b = load_encoder(tiny_model["ENCODERS_MODEL"], str(other), "cpu")
    assert not np.allclose(embed(a, [jpeg("green")]), embed(b, [jpeg("green")]), atol=1e-3)


def test_batch_embedding_equals_one_at_a_time(tiny_model):
    enc = load_encoder(tiny_model["ENCODERS_MODEL"], tiny_model["ENCODERS_PRETRAINED"], "cpu")
    frames = [jpeg(c) for c in ("red", "green", "blue", "white")]
    batched = embed(enc, frames)
    single = np.concatenate([embed(enc, [f]) for f in frames])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_corrupt_frames_are_reported_and_the_rest_of_the_batch_goes_on(tiny_model):
    enc = load_encoder(tiny_model["ENCODERS_MODEL"], tiny_model["ENCODERS_PRETRAINED"], "cpu")
    good = jpeg("red")
    arrays, ok, bad, _ = load_batch(enc.pre, [good, good[: len(good) // 2], b"not a jpeg", good])
    assert ok == [0, 3] and len(arrays) == 2
    assert [pos for pos, _ in bad] == [1, 2] and all("corrupt JPEG" in why for _, why in bad)
    with pytest.raises(CorruptFrame):
        decode_jpeg(b"\xff\xd8\xff\xd9")


def test_random_weights_warn_loudly(tiny_model, caplog):
    enc = load_encoder(tiny_model["ENCODERS_MODEL"], "none", "cpu")
    assert enc.name == "tiny-clip/none"
    assert "RANDOM weights" in caplog.text


@pytest.mark.parametrize(
    "model,pretrained,message",
    [
        ("no-such-model", "none", "unknown open_clip model"),
        ("ViT-B-32", "/nowhere/weights.pt", "does not exist"),
        ("ViT-B-32", "no-such-tag", "has no pretrained weights"),
    ],
)
def test_bad_model_settings_say_what_is_wrong(model, pretrained, message):
    with pytest.raises(ModelLoadError, match=message):
        load_encoder(model, pretrained, "cpu")


def test_device_auto_picks_cuda_only_where_there_is_one():
    from encoders.services.encoder.model import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda:0")
