"""The fast preprocessing path against open_clip's own (PIL decode + its eval transform).

Natural-looking test images: smooth shading, objects with edges, fine texture and sensor
noise, as camera frames have; several sizes, 4:3, 16:9 and odd shapes.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from encoders.services.encoder.model import load_encoder
from encoders.services.encoder.preprocess import Preprocessor, load_batch

SIZES = [(640, 480), (1280, 720), (1920, 1080), (480, 640), (1000, 300), (300, 301), (224, 224), (160, 120)]


def natural_jpeg(w: int, h: int, seed: int, quality: int = 85) -> bytes:
    rng = np.random.default_rng(seed)
    # Low-frequency shading: a coarse random grid upsampled smoothly.
    coarse = Image.fromarray(rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    img = coarse.copy()
    draw = ImageDraw.Draw(img)
    for _ in range(12):  # objects with hard edges
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(w // 20, w // 3), y0 + rng.integers(h // 20, h // 3)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([int(x0), int(y0), int(x1), int(y1)], fill=colour)
    for _ in range(30):  # thin lines: detail that downscaling must treat right
        draw.line(
            [tuple(rng.integers(0, (w, h))), tuple(rng.integers(0, (w, h)))],
            fill=tuple(int(c) for c in rng.integers(0, 255, 3)),
            width=int(rng.integers(1, 4)),
        )
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)  # sensor noise
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def reference_batch(enc, jpegs) -> torch.Tensor:
    return torch.stack([enc.reference_transform(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def vit_b_32():
    torch.manual_seed(0)
    return load_encoder("ViT-B-32", "none", "cpu")


@pytest.fixture(scope="module")
def images():
    return [natural_jpeg(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]


def test_full_size_decode_reproduces_open_clips_tensors(vit_b_32, images):
    """Without DCT scaling the fast path is open_clip's transform, up to float rounding."""
    exact = Preprocessor(**{**vit_b_32.pre.__dict__, "fast_decode": False})
    arrays, _ok, bad, _ = load_batch(exact, images)
    assert not bad
    ours = exact.to_tensor(arrays, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(ours, reference_batch(vit_b_32, images), atol=2e-5, rtol=0)


@pytest.fixture(scope="module")
def both_paths(vit_b_32, images) -> tuple[np.ndarray, np.ndarray]:
    """The images embedded through the fast path (the worker's decode) and through open_clip's transform."""
    arrays, _, bad, _ = load_batch(vit_b_32.pre, images)
    assert not bad and all(a.shape == (224, 224, 3) for a in arrays)
    return vit_b_32.embed_arrays(arrays), vit_b_32.embed(reference_batch(vit_b_32, images))


def test_fast_path_embeddings_match_open_clip_on_every_image(both_paths):
    ours, theirs = both_paths
    cos = cosines(ours, theirs)
    assert cos.min() >= 0.99, dict(zip(SIZES, cos.round(4), strict=False))


def test_fast_path_tells_images_apart_as_open_clip_does(both_paths, images):
    """The check above could pass if every image mapped to the same vector: make sure it doesn't."""
    ours, theirs = both_paths
    # cos(image i, image j) under both paths: the same similarity structure.
    np.testing.assert_allclose(ours @ ours.T, theirs @ theirs.T, atol=0.02)
    assert (theirs @ theirs.T)[np.triu_indices(len(images), 1)].min() < 0.999


def test_dct_scaling_decodes_large_frames_small_but_never_below_the_model_input():
    from encoders.services.encoder.preprocess import decode_jpeg

    for w, h in SIZES:
        img = decode_jpeg(natural_jpeg(w, h, seed=1), min_size=224)
        assert min(img.size) >= min(224, w, h)
        if min(w, h) >= 448:
            assert img.size[0] < w  # really reduced


def test_bf16_on_the_cpu_stays_within_cosine_099_of_fp32(vit_b_32, images):
    """The fidelity ENCODERS_PRECISION=bf16's help text promises for the CPU path."""
    torch.manual_seed(0)
    bf16 = load_encoder("ViT-B-32", "none", "cpu", precision="bf16")
    bf16.model.load_state_dict(vit_b_32.model.state_dict())  # same weights, other precision
    arrays, _, _, _ = load_batch(vit_b_32.pre, images)
    assert cosines(bf16.embed_arrays(arrays), vit_b_32.embed_arrays(arrays)).min() >= 0.99


def test_a_decode_pool_gives_the_same_frames_in_the_same_order(vit_b_32, images):
    from concurrent.futures import ThreadPoolExecutor

    batch = [*images, b"\xff\xd8 broken", *images[:2]]
    serial = load_batch(vit_b_32.pre, batch)
    with ThreadPoolExecutor(4) as pool:
        parallel = load_batch(vit_b_32.pre, batch, pool)
    assert parallel[1] == serial[1] and [p for p, _ in parallel[2]] == [len(images)]
    for a, b in zip(serial[0], parallel[0], strict=False):
        np.testing.assert_array_equal(a, b)
