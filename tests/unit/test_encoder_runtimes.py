"""ENCODERS_RUNTIME: ONNX Runtime and OpenVINO run the same image tower as PyTorch.

The tiny model (conftest's config and checkpoint, through the real loading code) and
ViT-B-32 with random weights; camera-like test photographs drawn by
test_encoder_preprocess's ``natural_jpeg`` and pisim's SyntheticScene, decoded by the
worker's own preprocessing. Both runtimes come with the ``test`` extra: a runtime that is
not installed fails these tests, it does not skip them.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.services.encoder.model import ClipImageEncoder, ModelLoadError, load_encoder
from encoders.services.encoder.preprocess import load_batch
from encoders.services.encoder.runtimes import cache as cache_module
from encoders.services.encoder.runtimes import select
from encoders.services.encoder.runtimes.cache import MANIFEST, ExportCache
from encoders.services.encoder.runtimes.export import cosines
from encoders.services.pisim.scene import SyntheticScene

from .test_encoder_preprocess import natural_jpeg

RUNTIMES = ("onnx", "openvino")


@pytest.fixture(scope="module", autouse=True)
def runtimes_installed():
    for runtime in RUNTIMES:
        if absent := select.missing(runtime):
            pytest.fail(f"ENCODERS_RUNTIME={runtime} needs {', '.join(absent)}: pip install -e '.[test]'")


def photographs(n: int, size: tuple[int, int] = (320, 240)) -> list[bytes]:
    """Half drawn scenes with sensor noise, half pisim's moving shapes, as JPEG frames."""
    out = [natural_jpeg(*size, seed=100 + i) for i in range(n - n // 2)]
    scene = SyntheticScene(*size, seed=7, scene_every=1.0)
    for i in range(n // 2):
        buf = io.BytesIO()
        scene.render(0.7 * i, i).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def decoded(enc: ClipImageEncoder, jpegs: list[bytes]) -> list[np.ndarray]:
    arrays, _, bad, _ = load_batch(enc.pre, jpegs)
    assert not bad
    return arrays


def tiny(tiny_model: dict, **kw) -> ClipImageEncoder:
    return load_encoder(tiny_model["ENCODERS_MODEL"], tiny_model["ENCODERS_PRETRAINED"], "cpu", **kw)


@pytest.fixture(scope="module")
def tiny_torch(tiny_model):
    return tiny(tiny_model)


@pytest.fixture(scope="module")
def tiny_frames(tiny_torch):
    return decoded(tiny_torch, photographs(16))


# --------------------------------------------------------------------------------------
# The same embeddings


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_matches_pytorch_on_every_batch_size_up_to_the_largest(
    runtime, tiny_model, tiny_torch, tiny_frames, tmp_path
):
    enc = tiny(tiny_model, runtime=runtime, cache_dir=str(tmp_path))
    assert enc.runtime is not None and enc.model is None  # PyTorch's copy of the weights is let go
    # What the worker and the recorder rely on: the same label, size and shape as PyTorch.
    assert (enc.name, enc.dim, enc.pre) == (tiny_torch.name, tiny_torch.dim, tiny_torch.pre)
    expected = tiny_torch.embed_arrays(tiny_frames)
    for n in range(1, len(tiny_frames) + 1):  # 16: twice the worker's batch on the CPU
        got = enc.embed_arrays(tiny_frames[:n])
        assert got.shape == (n, 64) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
        cos = cosines(got, expected[:n])
        assert cos.min() >= 0.999, (n, cos.round(5))
    # Every row is its own frame's (a batch split across OpenVINO's requests comes back in order).
    got = enc.embed_arrays(tiny_frames)
    assert (np.argmax(got @ expected.T, axis=1) == np.arange(len(tiny_frames))).all()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_stays_within_cosine_099_of_fp32_on_photographs(runtime, tiny_model, tiny_torch, tiny_frames, tmp_path):
    enc = tiny(tiny_model, runtime=runtime, precision="int8", cache_dir=str(tmp_path))
    assert enc.name == tiny_torch.name
    cos = cosines(enc.embed_arrays(tiny_frames), tiny_torch.embed_arrays(tiny_frames))
    assert cos.min() >= 0.99, cos.round(4)


def test_openvino_bf16_stays_within_cosine_099_of_fp32(tiny_model, tiny_torch, tiny_frames, tmp_path):
    enc = tiny(tiny_model, runtime="openvino", precision="bf16", cache_dir=str(tmp_path))
    assert cosines(enc.embed_arrays(tiny_frames), tiny_torch.embed_arrays(tiny_frames)).min() >= 0.99


@pytest.fixture(scope="module")
def vit_b_32_torch():
    return load_encoder("ViT-B-32", "none", "cpu")


@pytest.fixture(scope="module")
def vit_b_32_frames(vit_b_32_torch):
    return decoded(vit_b_32_torch, photographs(8, (640, 480)))


@pytest.fixture(scope="module")
def onnx_exports(tmp_path_factory) -> Path:
    """Where each image tower's ONNX export is kept, in a folder named by its weights' fingerprint."""
    return tmp_path_factory.mktemp("onnx-exports")


@pytest.fixture
def exported_once(onnx_exports, monkeypatch) -> None:
    """ViT-B-32's tower exported to ONNX once for the tests below, not once for each: every runtime
    and precision still builds its own model from that graph (quantised, converted), loads it, has
    it checked against PyTorch and is compared here. Exporting the same weights again (about 9 s
    each, ViT-B-32 on 2 cores) proves nothing more: the tiny model's tests above export every time."""
    from encoders.services.encoder.runtimes import export, onnx_runtime, openvino_runtime

    def export_onnx(tower: export.ImageTower, path: Path) -> None:
        made = onnx_exports / export.weights_fingerprint(tower) / path.name
        if not made.parent.exists():
            made.parent.mkdir()
            export.export_onnx(tower, made)
        for file in made.parent.iterdir():  # the graph, and its weights beside it under the name it gives them
            shutil.copyfile(file, path.with_name(file.name))

    for module in (onnx_runtime, openvino_runtime):
        monkeypatch.setattr(module, "export_onnx", export_onnx)


@pytest.mark.slow
@pytest.mark.usefixtures("exported_once")
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_vit_b_32_matches_pytorch_in_each_runtime(runtime, vit_b_32_torch, vit_b_32_frames, tmp_path):
    expected = vit_b_32_torch.embed_arrays(vit_b_32_frames)
    enc = load_encoder("ViT-B-32", "none", "cpu", runtime=runtime, cache_dir=str(tmp_path))
    assert (enc.name, enc.dim) == ("ViT-B-32/none", 512)
    for n in (1, 3, 8):
        cos = cosines(enc.embed_arrays(vit_b_32_frames[:n]), expected[:n])
        assert cos.min() >= 0.999, (n, cos.round(6))


@pytest.mark.slow
@pytest.mark.usefixtures("exported_once")
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_vit_b_32_int8_stays_within_cosine_099_of_fp32(runtime, vit_b_32_torch, vit_b_32_frames, tmp_path):
    """What the README promises for ENCODERS_PRECISION=int8 (random weights: no download here)."""
    enc = load_encoder("ViT-B-32", "none", "cpu", "int8", runtime=runtime, cache_dir=str(tmp_path))
    cos = cosines(enc.embed_arrays(vit_b_32_frames), vit_b_32_torch.embed_arrays(vit_b_32_frames))
    assert cos.min() >= 0.99, cos.round(4)


def test_random_weights_are_the_same_at_every_load(tiny_model):
    """So that an export of them is found in the cache again (and drift is reproducible)."""
    frames = [np.full((64, 64, 3), 90, np.uint8)]
    a = load_encoder(tiny_model["ENCODERS_MODEL"], "none", "cpu").embed_arrays(frames)
    torch.manual_seed(1234)  # whatever the caller's random state
    b = load_encoder(tiny_model["ENCODERS_MODEL"], "none", "cpu").embed_arrays(frames)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# The export cache


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def counting_builds(monkeypatch) -> list[str]:
    """Every export from now on, by runtime module."""
    calls: list[str] = []
    for name in RUNTIMES:
        module = select._module(name)
        real = module.build

        def build(tower, folder, int8, real=real, name=name):
            calls.append(name)
            real(tower, folder, int8)

        monkeypatch.setattr(module, "build", build)
    return calls


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_second_start_takes_the_export_from_the_cache(runtime, tiny_model, tiny_frames, tmp_path, monkeypatch):
    builds = counting_builds(monkeypatch)
    first = tiny(tiny_model, runtime=runtime, cache_dir=str(tmp_path))
    (entry,) = entries(tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    second = tiny(tiny_model, runtime=runtime, cache_dir=str(tmp_path))
    assert builds == [runtime]  # exported once
    assert entries(tmp_path) == [entry] and {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps
    np.testing.assert_allclose(second.embed_arrays(tiny_frames), first.embed_arrays(tiny_frames), atol=1e-6)
    manifest = json.loads((entry / MANIFEST).read_text())
    assert manifest["key"]["runtime"] == runtime and manifest["key"]["model"] == "tiny-clip"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_corrupt_export_is_rebuilt_never_used(runtime, tiny_model, tiny_torch, tiny_frames, tmp_path, monkeypatch):
    builds = counting_builds(monkeypatch)
    tiny(tiny_model, runtime=runtime, cache_dir=str(tmp_path))
    (entry,) = entries(tmp_path)
    weights = max((p for p in entry.iterdir() if p.name != MANIFEST), key=lambda p: p.stat().st_size)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)  # same size, other weights
    weights.write_bytes(bytes(data))
    enc = tiny(tiny_model, runtime=runtime, cache_dir=str(tmp_path))
    assert builds == [runtime, runtime]
    assert cosines(enc.embed_arrays(tiny_frames), tiny_torch.embed_arrays(tiny_frames)).min() >= 0.999
    assert cache_module.check(entry, json.loads((entry / MANIFEST).read_text())["key"]) is None


def test_a_truncated_file_or_a_missing_manifest_is_rebuilt(tiny_model, tmp_path, monkeypatch):
    builds = counting_builds(monkeypatch)
    tiny(tiny_model, runtime="onnx", cache_dir=str(tmp_path))
    (entry,) = entries(tmp_path)
    onnx = entry / "image.onnx"
    onnx.write_bytes(onnx.read_bytes()[:100])
    tiny(tiny_model, runtime="onnx", cache_dir=str(tmp_path))
    (entry / MANIFEST).unlink()
    tiny(tiny_model, runtime="onnx", cache_dir=str(tmp_path))
    assert builds == ["onnx"] * 3 and entries(tmp_path) == [entry]


def test_an_export_for_other_versions_is_stale_and_rebuilt(tiny_model, tmp_path, monkeypatch):
    builds = counting_builds(monkeypatch)
    tiny(tiny_model, runtime="onnx", cache_dir=str(tmp_path))
    (entry,) = entries(tmp_path)
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["key"]["runtime_version"] = "0.0.1"  # as if copied from a machine with an older runtime
    (entry / MANIFEST).write_text(json.dumps(manifest))
    tiny(tiny_model, runtime="onnx", cache_dir=str(tmp_path))
    assert builds == ["onnx", "onnx"]
    assert json.loads((entry / MANIFEST).read_text())["key"]["runtime_version"] != "0.0.1"


def test_other_weights_runtimes_and_precisions_get_entries_of_their_own(tiny_model, tmp_path):
    other = tmp_path / "other.pt"
    state = torch.load(tiny_model["ENCODERS_PRETRAINED"])["state_dict"]
    torch.save({"state_dict": {k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}}, other)
    cache = tmp_path / "cache"
    tiny(tiny_model, runtime="onnx", cache_dir=str(cache))
    load_encoder(tiny_model["ENCODERS_MODEL"], str(other), "cpu", runtime="onnx", cache_dir=str(cache))
    tiny(tiny_model, runtime="onnx", precision="int8", cache_dir=str(cache))
    tiny(tiny_model, runtime="openvino", cache_dir=str(cache))
    tiny(tiny_model, runtime="openvino", precision="bf16", cache_dir=str(cache))  # bf16: fp32 files, compiled so
    names = [p.name.rsplit("-", 1)[0] for p in entries(cache)]
    assert sorted(names) == sorted(["tiny-clip-onnx-fp32"] * 2 + ["tiny-clip-onnx-int8", "tiny-clip-openvino-fp32"])


def test_two_workers_starting_together_export_once_and_never_see_half_an_entry(tmp_path):
    cache = ExportCache(tmp_path)
    key = {"model": "m", "weights": "w"}
    builds, seen = [], []

    def build(folder: Path) -> None:
        builds.append(folder)
        (folder / "a.bin").write_bytes(b"x" * 1000)
        time.sleep(0.3)  # another worker looks in meanwhile: it finds nothing, or waits
        (folder / "b.bin").write_bytes(b"y" * 1000)

    def start() -> None:
        path, _ = cache.get_or_build("m", key, build)
        seen.append(sorted(p.name for p in path.iterdir()))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert seen == [["a.bin", "b.bin", MANIFEST]] * 4
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [cache.entry("m", key).name]  # no temp folder left


def test_a_build_that_fails_leaves_no_entry(tmp_path):
    cache = ExportCache(tmp_path)

    def build(folder: Path) -> None:
        (folder / "a.bin").write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        cache.get_or_build("m", {"k": 1}, build)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]

    def whole(folder: Path) -> None:
        (folder / "a.bin").write_bytes(b"whole")

    path, built = cache.get_or_build("m", {"k": 1}, whole)
    assert built and (path / "a.bin").read_bytes() == b"whole"


def test_an_export_that_does_not_reproduce_pytorch_is_refused_and_not_cached(tiny_model, tmp_path, monkeypatch):
    module = select._module("onnx")
    real = module.load

    def wrong(folder, threads, precision):
        tower = real(folder, threads, precision)
        embed = tower.embed
        tower.embed = lambda pixels: embed(255 - pixels)
        return tower

    monkeypatch.setattr(module, "load", wrong)
    with pytest.raises(ModelLoadError, match="does not reproduce PyTorch"):
        tiny(tiny_model, runtime="onnx", cache_dir=str(tmp_path))
    assert entries(tmp_path) == []


def test_the_cache_defaults_to_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ExportCache().root == tmp_path / "encoders"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ExportCache().root == tmp_path / "home" / ".cache" / "encoders"


# --------------------------------------------------------------------------------------
# Choosing a runtime


def test_auto_takes_openvino_then_onnx_on_the_cpu_and_torch_on_cuda(monkeypatch, caplog):
    caplog.set_level("INFO")
    assert select.choose("auto", "cpu", "auto", cuda_available=False) == "openvino"
    assert "ENCODERS_RUNTIME=auto: openvino" in caplog.text
    assert select.choose("auto", "auto", "auto", cuda_available=True) == "torch"
    assert select.choose("auto", "cuda:1", "fp16", cuda_available=True) == "torch"
    assert select.choose("auto", "cpu", "int8", cuda_available=False) == "openvino"
    assert select.choose("auto", "cpu", "bf16", cuda_available=False) == "openvino"
    monkeypatch.setattr(select, "missing", lambda r: ["openvino"] if r == "openvino" else [])
    assert select.choose("auto", "cpu", "fp32", cuda_available=False) == "onnx"
    assert select.choose("auto", "cpu", "bf16", cuda_available=False) == "torch"  # ONNX Runtime has no bf16
    monkeypatch.setattr(select, "missing", lambda r: [r])
    assert select.choose("auto", "cpu", "auto", cuda_available=False) == "torch"
    assert "pip install 'encoders[openvino]'" in caplog.text


@pytest.mark.parametrize(
    "runtime,device,precision,message",
    [
        ("onnx", "cuda", "auto", "runs on the CPU"),
        ("openvino", "cuda:0", "fp32", "runs on the CPU"),
        ("torch", "cpu", "int8", "int8 runs with ENCODERS_RUNTIME=onnx or openvino"),
        ("onnx", "cpu", "bf16", "not offered with ENCODERS_RUNTIME=onnx"),
        ("openvino", "cpu", "fp16", "not offered with ENCODERS_RUNTIME=openvino"),
        ("tensorrt", "cpu", "auto", "must be one of"),
    ],
)
def test_what_cannot_run_says_why(runtime, device, precision, message):
    with pytest.raises(ModelLoadError, match=message):
        select.choose(runtime, device, precision, cuda_available=True)


def test_a_runtime_not_installed_says_which_extra_to_install(monkeypatch):
    monkeypatch.setattr(select.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"needs onnxruntime, onnx, onnxscript: pip install 'encoders\[onnx\]'"):
        select.choose("onnx", "cpu", "auto", cuda_available=False)


def test_the_worker_settings_take_the_runtime_its_precision_and_the_cache(tmp_path):
    from encoders.services.encoder.config import EncoderConfig
    from encoders.shared.settings import SettingsError

    cfg = EncoderConfig.from_env(
        {"ENCODERS_RUNTIME": "openvino", "ENCODERS_PRECISION": "int8", "ENCODERS_MODEL_CACHE": str(tmp_path)}
    )
    assert (cfg.runtime, cfg.precision, cfg.model_cache) == ("openvino", "int8", str(tmp_path))
    assert EncoderConfig.from_env({}).runtime == "auto"
    with pytest.raises(SettingsError, match="ENCODERS_RUNTIME"):
        EncoderConfig.from_env({"ENCODERS_RUNTIME": "tensorrt"})


def test_a_cache_folder_that_cannot_be_created_stops_the_worker_with_one_line(tiny_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelLoadError, match="ENCODERS_MODEL_CACHE"):
        tiny(tiny_model, runtime="onnx", cache_dir=str(blocker / "cache"))
