"""OpenVINO IR export: fp32 / fp16 match PyTorch, manifest in rt_info, fused extension when built."""
from __future__ import annotations

import openvino as ov
import pytest

from converters import export
from converters.openvino.convert import EXTENSION_LIBRARY, fused_extension_available
from export_helpers import assert_outputs_close, build_tiny, feeds, graph_inputs, model_params, random_images, torch_outputs
from runtime.manifest import Manifest, read_sidecar

HW = (64, 96)
PARAMS = model_params()
MSDA_MODELS = sorted({n for n, f in PARAMS if f})


def run_ov(path, x, n_outputs, extension=None):
    core = ov.Core()
    if extension is not None:
        core.add_extension(str(extension))
    # The CPU plugin defaults to bf16 on CPUs that have it; parity needs f32 arithmetic.
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds(graph_inputs(compiled), x))
    return [result[compiled.output(i)] for i in range(n_outputs)]


# The top-K tail of the graph is the same for every model (and checked per model with ONNX
# Runtime); OpenVINO runs it for the tiny model and the raw heads for every model.
OV_PARAMS = [(n, f, False) for n, f in PARAMS] + [(n, f, True) for n, f in PARAMS if n == "tiny_msda"]


@pytest.mark.parametrize("name,form,postprocess", OV_PARAMS)
def test_openvino_fp32_matches_pytorch(tmp_path, name, form, postprocess):
    model = build_tiny(name)
    path = export(model, "openvino", tmp_path / "m.xml", imgsz=HW, msda=form or "grid_sample", postprocess=postprocess,
                  simplify=False)
    assert path.with_suffix(".bin").is_file()
    x = random_images(1, HW, seed=2)
    want = torch_outputs(model, x, postprocess)
    assert_outputs_close(model, run_ov(path, x, len(want)), want, postprocess, HW)


@pytest.mark.parametrize("name", ["tiny_msda"] + MSDA_MODELS[:1])
def test_openvino_fp16_compressed(tmp_path, name):
    model = build_tiny(name)
    fp32 = export(model, "openvino", tmp_path / "a.xml", imgsz=HW, msda="grid_sample", postprocess=False, simplify=False)
    fp16 = export(model, "openvino", tmp_path / "b.xml", imgsz=HW, msda="grid_sample", postprocess=False,
                  precision="fp16", simplify=False)
    # weights stored as fp16: the .bin roughly halves
    assert fp16.with_suffix(".bin").stat().st_size < 0.6 * fp32.with_suffix(".bin").stat().st_size
    x = random_images(1, HW, seed=4)
    want = torch_outputs(model, x, False)
    got = run_ov(fp16, x, 2)
    assert_outputs_close(model, got, want, False, HW, atol=2e-2)


def test_manifest_in_rt_info_and_sidecar(tmp_path):
    model = build_tiny("tiny_msda")
    path = export(model, "openvino", tmp_path / "m.xml", imgsz=HW, msda="gather", precision="fp16", simplify=False)
    side = read_sidecar(path)
    embedded = Manifest.from_json(ov.Core().read_model(str(path)).get_rt_info(["edgedet", "manifest"]).astype(str))
    assert embedded == side
    assert side.backend == "openvino" and side.precision == "fp16" and side.msda == "gather" and side.custom_ops == {}


@pytest.mark.openvino_ext
@pytest.mark.skipif(not fused_extension_available(), reason="OpenVINO MSDA extension not built")
@pytest.mark.parametrize("postprocess", [False, True], ids=["raw", "topk"])
@pytest.mark.parametrize("name", ["tiny_msda"] + MSDA_MODELS)
def test_openvino_fused_matches_pytorch(tmp_path, name, postprocess):
    model = build_tiny(name)
    path = export(model, "openvino", tmp_path / "f.xml", imgsz=HW, msda="fused", postprocess=postprocess, simplify=False)
    lib = path.parent / EXTENSION_LIBRARY
    assert lib.is_file() and read_sidecar(path).custom_ops == {"openvino": EXTENSION_LIBRARY}
    core = ov.Core()
    core.add_extension(str(lib))
    types = [op.get_type_name() for op in core.read_model(str(path)).get_ops()]
    assert "GridSample" not in types and types.count("MultiScaleDeformableAttention") >= 1
    x = random_images(1, HW, seed=5)
    want = torch_outputs(model, x, postprocess)
    assert_outputs_close(model, run_ov(path, x, len(want), extension=lib), want, postprocess, HW)


@pytest.mark.openvino_ext
@pytest.mark.skipif(not fused_extension_available(), reason="OpenVINO MSDA extension not built")
def test_openvino_fused_dynamic_batch(tmp_path):
    name = MSDA_MODELS[0] if MSDA_MODELS else "tiny_msda"
    model = build_tiny(name)
    path = export(model, "openvino", tmp_path / "d.xml", imgsz=HW, msda="fused", dynamic_batch=True, simplify=False)
    x = random_images(2, HW, seed=6)
    want = torch_outputs(model, x, True)
    got = run_ov(path, x, 3, extension=path.parent / EXTENSION_LIBRARY)
    assert got[0].shape[0] == 2
    assert_outputs_close(model, got, want, True, HW)
