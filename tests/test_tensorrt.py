"""TensorRT engines: the engine file and its checks, ``auto``'s choice and fallback, the builder's
control flow, and (``requires_tensorrt``) real builds and runs.

Without TensorRT the engine file format, every refusal sentence and the ``auto`` choice are
tested on forged headers (the devices are named, never probed); the builder's handling of parser
errors, profiles and the timing cache runs against a stand-in ``tensorrt`` module recording the
documented calls, since the real one needs an NVIDIA GPU.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from eri.choices import HAS_TENSORRT
from eri.models import engine
from eri.models.bundle import load_bundle, record_export, save_bundle
from eri.models.engine import (
    ENGINE_FP32_TOLERANCE,
    PROFILES,
    EngineDevice,
    EngineError,
    build_engine,
    check_engine,
    check_precision_supported,
    device_header,
    engine_file_name,
    read_engine_header,
    read_plan,
    write_engine,
)
from eri.models.export import FACES, GRAPH_FILES, GRAPH_VERSION, head_args, weights_digest
from eri.realtime.backends import BackendError, choose_backend, create_backend
from eri.realtime.variants import find_engines

ARCH = "dual_branch"
H100 = EngineDevice("NVIDIA H100 80GB HBM3", "9.0", "10.7.0")
A100 = EngineDevice("NVIDIA A100-SXM4-80GB", "8.0", "10.7.0")
PLAN = bytes(range(256)) * 40


def _forge(
    folder: Path,
    device: EngineDevice,
    weights: str,
    *,
    precision: str = "fp16",
    name_for: EngineDevice | None = None,
    graph_version: int = GRAPH_VERSION,
) -> dict[str, Path]:
    """Engine files for the three graphs with headers naming ``device`` (file names for
    ``name_for``, default the same device)."""
    paths = {}
    for graph, onnx in GRAPH_FILES.items():
        path = folder / engine_file_name(onnx, precision, name_for or device)
        meta = {"graph": graph, "precision": precision, "architecture": ARCH, "weights": weights}
        meta["graph_version"] = graph_version
        write_engine(path, PLAN, {**meta, **device_header(device), "profiles": [[1, 1, 1]]})
        paths[graph] = path
    return paths


@pytest.fixture
def bundle_dir(small_model, tmp_path) -> Path:
    return save_bundle(small_model(ARCH), tmp_path / "bundle")


# --------------------------------------------------------------------------- the engine file
def test_header_round_trip(tmp_path):
    path = tmp_path / "frame_encoder_fp16.x.engine"
    meta = {"graph": "frame_encoder", "precision": "fp16", "architecture": ARCH, "weights": "w1"}
    written = write_engine(path, PLAN, {**meta, **device_header(H100), "profiles": [[1, 1, 32]]})
    header = read_engine_header(path)
    assert header == written
    assert header.device == H100 and header.weights == "w1" and header.profiles == [[1, 1, 32]]
    assert header.plan_bytes == len(PLAN) and read_plan(header) == PLAN
    assert header.created.endswith("+00:00")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_engine_file_name_names_graph_precision_gpu_and_version():
    assert engine_file_name("frame_encoder.onnx", "fp16", H100) == (
        "frame_encoder_fp16.nvidia-h100-80gb-hbm3.sm90.trt10.7.0.engine"
    )
    assert engine_file_name("head.onnx", "fp32", A100) == (
        "head.nvidia-a100-sxm4-80gb.sm80.trt10.7.0.engine"
    )


@pytest.mark.parametrize(
    "device, weights, precision, says",
    [
        (
            A100,
            "w",
            "fp16",
            "was built for NVIDIA A100-SXM4-80GB (compute capability 8.0), "
            "not this NVIDIA H100 80GB HBM3 (9.0)",
        ),
        (EngineDevice(H100.gpu, "8.9", H100.tensorrt), "w", "fp16", "compute capability 8.9"),
        (
            EngineDevice(H100.gpu, "9.0", "10.3.0"),
            "w",
            "fp16",
            "was built with TensorRT 10.3.0, not the installed 10.7.0",
        ),
        (H100, "other", "fp16", "was built from other weights (dual_branch other)"),
        (H100, "w", "int8", "is int8, not fp16"),
    ],
)
def test_forged_engine_is_refused_with_one_sentence(tmp_path, device, weights, precision, says):
    path = _forge(tmp_path, device, weights, precision=precision)["head"]
    with pytest.raises(EngineError) as exc:
        check_engine(read_engine_header(path), H100, weights="w", precision="fp16", bundle="B")
    text = str(exc.value)
    assert says in text and str(path) in text
    assert text.endswith("rebuild it on this machine with `eri export B --format engine-fp16`.")
    assert text.count(". ") == 0  # one sentence


def test_engine_of_the_old_graph_version_is_refused(tmp_path):
    """An engine built before the audio encoder was split off (no graph version in its header:
    version 1, whose head took raw tokens) is refused with one sentence."""
    path = _forge(tmp_path, H100, "w", graph_version=1)["head"]
    with pytest.raises(EngineError) as exc:
        check_engine(read_engine_header(path), H100, weights="w", precision="fp16", bundle="B")
    text = str(exc.value)
    assert f"was built from graph version 1, not {GRAPH_VERSION}" in text and str(path) in text
    assert text.endswith("rebuild it on this machine with `eri export B --format engine-fp16`.")
    assert text.count(". ") == 0


def test_truncated_engine_is_refused(tmp_path):
    path = _forge(tmp_path, H100, "w")["head"]
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(EngineError, match=r"is truncated or damaged \(10140 of 10240 plan bytes\)"):
        read_engine_header(path)
    path.write_bytes(data[:40])  # cut inside the header
    with pytest.raises(EngineError, match="truncated or damaged .*its header is cut.*eri export"):
        read_engine_header(path)


def test_damaged_plan_fails_its_checksum(tmp_path):
    path = _forge(tmp_path, H100, "w")["head"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="does not match its checksum.*engine-fp16"):
        read_plan(read_engine_header(path))


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, PLAN])
def test_file_without_the_header_is_refused(tmp_path, content):
    path = tmp_path / "head.engine"
    path.write_bytes(content)  # e.g. a raw trtexec plan
    with pytest.raises(EngineError, match="is not an ERI Live TensorRT engine .*`eri export"):
        read_engine_header(path)


def test_damaged_header_is_refused(tmp_path):
    path = _forge(tmp_path, H100, "w")["head"]
    raw = bytearray(path.read_bytes())
    raw[12] = ord("#")  # the header JSON's opening brace
    path.write_bytes(bytes(raw))
    with pytest.raises(EngineError, match="has a damaged header; rebuild it on this machine"):
        read_engine_header(path)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "head.engine"
    write_engine(
        path,
        PLAN,
        {
            "graph": "head",
            "precision": "fp32",
            "architecture": ARCH,
            "weights": "w",
            **device_header(H100),
            "profiles": [],
        },
    )
    raw = path.read_bytes().replace(b'"format_version": 1', b'"format_version": 9')
    path.write_bytes(raw)
    with pytest.raises(EngineError, match="has format 9, newer than this ERI Live reads"):
        read_engine_header(path)


@pytest.mark.parametrize(
    "capability, precision, refused",
    [
        ("5.0", "fp16", True),
        ("5.3", "fp16", False),
        ("6.0", "int8", True),
        ("6.1", "int8", False),
        ("5.0", "fp32", False),
        ("9.0", "fp16", False),
    ],
)
def test_gpu_without_the_precision_is_refused(capability, precision, refused):
    gpu = EngineDevice("Old GPU", capability, "10.7.0")
    if not refused:
        check_precision_supported(precision, gpu)
        return
    with pytest.raises(EngineError, match=f"has no {precision} support.*--format engine`"):
        check_precision_supported(precision, gpu, "B")


# --------------------------------------------------------------------------- auto
def test_auto_refuses_an_engine_for_another_gpu_and_falls_back(bundle_dir, caplog):
    bundle = load_bundle(bundle_dir)
    _forge(bundle_dir, A100, weights_digest(bundle.model))
    choice = choose_backend(bundle, "fp16", cuda=True, engine_device=H100)
    assert choice.name == "torch" and choice.engines is None
    assert "was built for NVIDIA A100-SXM4-80GB" in choice.reason
    assert f"`eri export {bundle_dir} --format engine-fp16`" in choice.reason
    assert "was built for NVIDIA A100" in caplog.text  # logged as a warning
    cpu = choose_backend(bundle, "fp16", cuda=False, engine_device=None)
    assert cpu.name == "onnxruntime" and "TensorRT is not installed; no CUDA GPU" in cpu.reason
    int8 = choose_backend(bundle, "int8", cuda=True, engine_device=H100)
    assert int8.name == "onnxruntime" and "torch does not run int8" in int8.reason


def test_auto_picks_the_matching_engine(bundle_dir):
    bundle = load_bundle(bundle_dir)
    weights = weights_digest(bundle.model)
    _forge(bundle_dir, A100, weights)  # another GPU's engines beside it are passed over
    ours = _forge(bundle_dir, H100, weights)
    choice = choose_backend(bundle, "fp16", cuda=True, engine_device=H100)
    assert choice.name == "tensorrt" and choice.engines == ours
    assert "match NVIDIA H100 80GB HBM3 (compute capability 9.0, TensorRT 10.7.0)" in choice.reason
    none = choose_backend(bundle, "fp32", cuda=True, engine_device=H100)
    assert none.name == "torch"
    assert "has no fp32 TensorRT engine" in none.reason and "--format engine`" in none.reason
    int8 = choose_backend(bundle, "int8", cuda=True, engine_device=H100).reason
    assert "`eri calibrate " in int8 and "--format engine-int8 --calib CALIB`" in int8


def test_a_renamed_engine_is_judged_by_its_header(bundle_dir):
    bundle = load_bundle(bundle_dir)
    _forge(bundle_dir, A100, weights_digest(bundle.model), name_for=H100)
    lookup = find_engines(bundle, "fp16", H100)
    assert lookup.paths is None and "was built for NVIDIA A100" in lookup.why


def test_auto_on_this_machine_says_why(onnx_exports, bundle_dir, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: auto picks an engine or torch there")
    for graph, src in onnx_exports[ARCH].paths.items():  # the session's export as the bundle's
        shutil.copy(src, bundle_dir / src.name)
        record_export(
            bundle_dir,
            src.name,
            {"file": src.name, "format": "onnx", "precision": "fp32", "graph": graph},
        )
    with caplog.at_level("INFO", logger="eri.realtime.backends"):
        backend = create_backend(load_bundle(bundle_dir), "auto")
    assert backend.name == "onnxruntime"
    picked = [r.getMessage() for r in caplog.records if r.name == "eri.realtime.backends"]
    assert backend.reason == picked[0]
    assert backend.reason.startswith("auto picked onnxruntime: ONNX Runtime on the CPU:")
    assert backend.reason.endswith("no CUDA GPU")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_names_the_install(bundle_dir):
    with pytest.raises(BackendError, match=r"Unknown backend 'tensorrt'.*eri-live\[tensorrt\]"):
        create_backend(load_bundle(bundle_dir), "tensorrt")


# --------------------------------------------------------------------------- the builder
class _Fake:
    """A stand-in ``tensorrt`` module that records the documented calls build_engine makes."""

    def __init__(self, *, errors=(), plan=b"PLAN", cache_ok=True):
        self.calls: list[tuple] = []
        fake = self

        class ILogger:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

            def __init__(self):
                pass

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            num_inputs = 2

            def get_input(self, i):
                return [Tensor("visual", (-1, 8, 64)), Tensor("visual_present", (-1,))][i]

        class Parser:
            def __init__(self, network, logger):
                self.num_errors = len(errors)

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", path))
                return not errors

            def get_error(self, i):
                return errors[i]

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("set_shape", name, lo, opt, hi))

        class Cache:
            def serialize(self):
                return b"TIMING"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def clear_flag(self, flag):
                fake.calls.append(("clear_flag", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                fake.calls.append(("create_timing_cache", data))
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_timing_cache", ignore_mismatch))
                return cache_ok

            def get_timing_cache(self):
                return Cache()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",))
                return plan

        self.module = types.SimpleNamespace(
            __version__="10.7.0",
            ILogger=ILogger,
            Builder=Builder,
            OnnxParser=Parser,
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
            BuilderFlag=types.SimpleNamespace(TF32="TF32"),
        )

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


@pytest.fixture
def fake_trt(monkeypatch):
    def install(**kw):
        fake = _Fake(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        monkeypatch.setattr(engine, "_LOGGER", None)
        return fake

    return install


def test_builder_logs_every_parser_error_and_writes_nothing(fake_trt, tmp_path, caplog):
    fake = fake_trt(errors=("node 3 (Einsum): unsupported", "node 9 (If): dynamic"))
    out = tmp_path / "head.engine"
    with pytest.raises(EngineError) as exc:
        build_engine(
            tmp_path / "head.onnx", out, precision="fp32", profiles=[(1, 1, 1)], device=H100
        )
    assert "could not parse" in str(exc.value) and "2 error(s) logged" in str(exc.value)
    assert "parser error 1/2" in caplog.text and "node 3 (Einsum): unsupported" in caplog.text
    assert "parser error 2/2" in caplog.text and "node 9 (If): dynamic" in caplog.text
    assert fake.named("create_network") == [("create_network", 1)]  # STRONGLY_TYPED asked
    assert not fake.named("build_serialized_network") and list(tmp_path.iterdir()) == []


def test_builder_profiles_timing_cache_and_header(fake_trt, tmp_path):
    fake = fake_trt(plan=PLAN)
    cache = tmp_path / "timing.cache"
    out = tmp_path / "e.engine"
    meta = {"graph": "head", "architecture": ARCH, "weights": "w"}
    header = build_engine(
        tmp_path / "head.onnx",
        out,
        precision="fp32",
        profiles=PROFILES["head"] + ((2, 4, 8),),
        timing_cache=cache,
        meta=meta,
        device=H100,
    )
    assert fake.named("set_shape") == [
        ("set_shape", "visual", (1, 8, 64), (1, 8, 64), (1, 8, 64)),
        ("set_shape", "visual_present", (1,), (1,), (1,)),
        ("set_shape", "visual", (2, 8, 64), (4, 8, 64), (8, 8, 64)),
        ("set_shape", "visual_present", (2,), (4,), (8,)),
    ]
    assert len(fake.named("add_optimization_profile")) == 2
    assert fake.named("clear_flag") == [("clear_flag", "TF32")]  # fp32 means fp32
    assert fake.named("create_timing_cache") == [("create_timing_cache", b"")]
    assert fake.named("set_timing_cache") == [("set_timing_cache", False)]
    assert cache.read_bytes() == b"TIMING"
    assert read_engine_header(out) == header and read_plan(header) == PLAN
    assert header.device == H100 and header.graph == "head" and header.onnx == "head.onnx"
    assert header.profiles == [[1, 1, 1], [2, 4, 8]]
    assert header.graph_version == GRAPH_VERSION
    # fp16 keeps the builder's defaults: the precision is in the ONNX (strongly typed).
    fake.calls.clear()
    build_engine(
        tmp_path / "head.onnx",
        out,
        precision="fp16",
        profiles=[(1, 1, 1)],
        timing_cache=cache,
        meta=meta,
        device=H100,
    )
    assert fake.named("clear_flag") == [] and fake.named("create_timing_cache")[0][1] == b"TIMING"


def test_builder_failure_writes_nothing(fake_trt, tmp_path):
    fake_trt(plan=None)
    with pytest.raises(EngineError, match="could not build an engine from .*head.onnx"):
        build_engine(
            tmp_path / "head.onnx",
            tmp_path / "e.engine",
            precision="fp32",
            profiles=[(1, 1, 1)],
            meta={"graph": "head"},
            device=H100,
        )
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- TensorRT itself
@pytest.fixture
def trt_bundle(onnx_exports, bundle_dir) -> Path:
    for graph, src in onnx_exports[ARCH].paths.items():
        shutil.copy(src, bundle_dir / src.name)
        record_export(
            bundle_dir,
            src.name,
            {"file": src.name, "format": "onnx", "precision": "fp32", "graph": graph},
        )
    return bundle_dir


@pytest.mark.requires_tensorrt
def test_engines_build_load_and_match_torch(trt_bundle, tmp_path):
    from eri.models.engine import current_device
    from eri.models.precision import probe_inputs, torch_reference
    from eri.realtime.backend_tensorrt import TensorRTBackend

    bundle = load_bundle(trt_bundle)
    device = current_device()
    meta = {"architecture": ARCH, "weights": weights_digest(bundle.model)}
    paths = {}
    for graph in ("frame_encoder", "audio_encoder", "head"):
        paths[graph] = tmp_path / engine_file_name(f"{graph}.onnx", "fp32", device)
        header = build_engine(
            trt_bundle / f"{graph}.onnx",
            paths[graph],
            precision="fp32",
            profiles=PROFILES[graph],
            timing_cache=tmp_path / "t.cache",
            meta={**meta, "graph": graph},
        )
        assert header.device == device
    assert (tmp_path / "t.cache").stat().st_size > 0
    backend = TensorRTBackend(bundle, "fp32", engines=paths)
    probe = probe_inputs(bundle.model, batch=2, seed=3)
    ref = torch_reference(bundle.model, probe)
    features = backend.encode_frames(probe[FACES])
    scale = max(1.0, float(np.abs(ref["frame_encoder"]).max()))
    assert np.abs(features - ref["frame_encoder"]).max() <= ENGINE_FP32_TOLERANCE * scale
    audio = backend.encode_audio(probe["audio_tokens"])  # 64 tokens: the second profile
    scale = max(1.0, float(np.abs(ref["audio_encoder"]).max()))
    assert np.abs(audio - ref["audio_encoder"]).max() <= ENGINE_FP32_TOLERANCE * scale
    one = backend.encode_audio(probe["audio_tokens"][:1])  # the streaming step's one token
    assert np.abs(one - ref["audio_encoder"][:1]).max() <= ENGINE_FP32_TOLERANCE * scale
    single = [backend.head(*head_args({k: v[:1] for k, v in probe.items()})) for _ in range(4)]
    assert backend.head_engine.profiles[0].graph is not None  # captured after the 2nd call
    assert all(np.array_equal(single[0], s) for s in single[1:])  # replay == uncaptured
    assert np.abs(single[0] - ref["head"][:1]).max() <= ENGINE_FP32_TOLERANCE


@pytest.mark.requires_tensorrt
def test_export_engine_then_auto_picks_it_and_refuses_it_truncated(trt_bundle, capsys, caplog):
    from eri.realtime.cli import main

    assert main(["export", str(trt_bundle), "--format", "engine-fp16", "--check"]) == 0
    assert "OK: within" in capsys.readouterr().out
    exports = json.loads((trt_bundle / "bundle.json").read_text())["exports"]
    engines = [k for k, v in exports.items() if v["format"] == "engine-fp16"]
    assert len(engines) == 2 and not list(trt_bundle.glob("*.tmp*"))
    backend = create_backend(load_bundle(trt_bundle), "auto", "fp16")
    assert backend.name == "tensorrt" and "auto picked tensorrt" in backend.reason
    engine_file = trt_bundle / engines[0]
    engine_file.write_bytes(engine_file.read_bytes()[:-1000])
    backend = create_backend(load_bundle(trt_bundle), "auto", "fp16")
    assert backend.name == "torch" and "truncated" in backend.reason


@pytest.mark.requires_tensorrt
def test_real_parser_errors_are_logged(tmp_path, caplog):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(EngineError, match="could not parse"):
        build_engine(
            bad,
            tmp_path / "bad.engine",
            precision="fp32",
            profiles=[(1, 1, 1)],
            meta={"graph": "head"},
        )
    assert "parser error 1/" in caplog.text and not (tmp_path / "bad.engine").exists()
