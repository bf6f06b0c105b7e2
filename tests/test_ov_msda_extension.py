"""Fused OpenVINO MSDA extension: an ONNX graph with one edgedet::MultiScaleDeformableAttention
node, read by OpenVINO with `libedgedet_ov_msda.so`, against the official reference outputs and
the `pytorch` specification (random non-square levels, batches, i32 shapes, f16, IR round trip)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from converters.openvino import extension  # noqa: E402

pytestmark = pytest.mark.openvino_ext

MSDA_CORE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference" / "msda_core"
INPUTS = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
INDEX_INPUTS = ("spatial_shapes", "level_start_index")


@pytest.fixture(scope="session")
def ov_msda_library() -> Path:
    has_toolchain = shutil.which("cmake") is not None and (shutil.which("g++") or shutil.which("c++"))
    if has_toolchain:
        return extension.build()  # no-op when the library is newer than its sources
    if not extension.is_available():
        pytest.skip("cmake or a C++ compiler is missing; cannot build the OpenVINO MSDA extension")
    return extension.library_path()


@pytest.fixture(scope="session")
def core(ov_msda_library) -> "ov.Core":
    c = ov.Core()
    c.add_extension(str(ov_msda_library))
    return c


DYNAMIC_DIMS = {
    "value": ["N", "S", "M", "D"],
    "spatial_shapes": ["L", 2],
    "level_start_index": ["L"],
    "sampling_locations": ["N", "Lq", "M", "L", "P", 2],
    "attention_weights": ["N", "Lq", "M", "L", "P"],
}


def fused_model(float_type=TensorProto.FLOAT, index_type=TensorProto.INT64, dims=None) -> "onnx.ModelProto":
    """One fused node (dynamic dimensions unless `dims` overrides some inputs), checked by onnx.checker."""
    dims = {**DYNAMIC_DIMS, **(dims or {})}
    inputs = [
        helper.make_tensor_value_info(name, index_type if name in INDEX_INPUTS else float_type, dims[name])
        for name in INPUTS
    ]
    node = helper.make_node("MultiScaleDeformableAttention", list(INPUTS), ["output"], domain="edgedet")
    output = helper.make_tensor_value_info("output", float_type, ["N", "Lq", "C"])
    graph = helper.make_graph([node], "msda_fused", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("edgedet", 1)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def compiled(core, tmp_path_factory):
    path = tmp_path_factory.mktemp("msda") / "msda_fused.onnx"
    onnx.save(fused_model(), str(path))
    model = core.read_model(str(path))
    assert "MultiScaleDeformableAttention" in [op.get_type_name() for op in model.get_ordered_ops()]
    return core.compile_model(model, "CPU")


def reference(value, shapes, loc, weights) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from edgedet.ops import multi_scale_deformable_attention

    out = multi_scale_deformable_attention(
        torch.from_numpy(value), torch.from_numpy(shapes), torch.from_numpy(loc), torch.from_numpy(weights)
    )
    return out.numpy()


def random_inputs(shapes, n, lq, m=4, d=8, p=3, seed=0):
    rng = np.random.default_rng(seed)
    shapes = np.asarray(shapes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int64)
    value = rng.standard_normal((n, int((shapes[:, 0] * shapes[:, 1]).sum()), m, d), dtype=np.float32)
    loc = rng.uniform(-0.15, 1.15, (n, lq, m, len(shapes), p, 2)).astype(np.float32)
    weights = rng.uniform(0, 1, (n, lq, m, len(shapes), p)).astype(np.float32)
    return value, shapes, starts, loc, weights


def test_library_path_and_availability(ov_msda_library):
    assert extension.is_available()
    assert ov_msda_library.name == "libedgedet_ov_msda.so" and ov_msda_library.is_file()
    assert extension.library_path() == ov_msda_library


def test_missing_library_and_toolchain_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(extension, "LIB_DIR", tmp_path / "lib")
    assert not extension.is_available()
    with pytest.raises(FileNotFoundError, match="build_ov_extension.sh") as err:
        extension.library_path()
    assert "gather" in str(err.value) and "GridSample" in str(err.value)
    monkeypatch.setattr(extension.shutil, "which", lambda tool: None)
    with pytest.raises(extension.ExtensionBuildError, match="missing cmake"):
        extension.library_path(build_if_missing=True)


@pytest.mark.parametrize("case", ["case0", "case1", "case2"])
def test_matches_official_reference(compiled, case):
    if not (MSDA_CORE / "inputs.npz").is_file():
        pytest.skip(f"{MSDA_CORE} is not present")
    inputs, outputs = np.load(MSDA_CORE / "inputs.npz"), np.load(MSDA_CORE / "outputs.npz")
    out = compiled([inputs[f"{case}.{key}"] for key in INPUTS])[0]
    expected = outputs[f"{case}.output"]
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "shapes, n, lq, d",
    [
        ([(7, 13), (4, 7), (2, 3)], 1, 11, 8),
        ([(13, 5), (6, 2), (3, 1)], 3, 6, 32),  # batch 3, single-column level
        ([(1, 9), (9, 1)], 2, 5, 5),  # channel count without a specialised kernel
        ([(10, 12), (5, 6), (3, 3), (2, 2)], 2, 70, 16),
    ],
)
def test_random_non_square_batches(compiled, shapes, n, lq, d):
    value, shapes_arr, starts, loc, weights = random_inputs(shapes, n, lq, d=d, seed=lq)
    out = compiled([value, shapes_arr, starts, loc, weights])[0]
    np.testing.assert_allclose(out, reference(value, shapes_arr, loc, weights), atol=1e-4, rtol=0)


def test_borders_far_outside_and_nan(compiled):
    """Exact borders and pixel centres match the specification; huge, infinite and NaN
    locations read nothing (zero contribution) instead of out-of-range memory."""
    value, shapes, starts, _, _ = random_inputs([(3, 4), (2, 5)], 1, 1, m=2, d=8, p=1, seed=7)
    xy = np.array([[0, 0], [1, 1], [0.5, 0.5], [1 / 8, 0.99], [-0.1, 1.05], [1.0, 0.3], [0.3, 1.0],
                   [-3, 0.5], [1e30, 0.5], [0.5, -1e30], [np.inf, 0.2], [0.2, -np.inf]], dtype=np.float32)
    loc = np.broadcast_to(xy.reshape(1, -1, 1, 1, 1, 2), (1, len(xy), 2, 2, 1, 2)).copy()
    weights = np.random.default_rng(8).uniform(0.1, 1, (1, len(xy), 2, 2, 1)).astype(np.float32)
    out = compiled([value, shapes, starts, loc, weights])[0]
    np.testing.assert_allclose(out, reference(value, shapes, np.clip(loc, -10, 10), weights), atol=1e-5, rtol=0)
    assert np.all(out[0, 7:] == 0)
    nan_loc = loc.copy()
    nan_loc[0, :, :, 0, 0, 0] = np.nan  # level 0 x of every query: that sample contributes nothing
    far_loc = loc.copy()
    far_loc[0, :, :, 0, 0, 0] = -10.0
    out = compiled([value, shapes, starts, nan_loc, weights])[0]
    np.testing.assert_allclose(out, reference(value, shapes, np.clip(far_loc, -10, 10), weights), atol=1e-5, rtol=0)


def test_int32_level_tables_and_convert_model(ov_msda_library, tmp_path):
    path = tmp_path / "msda_i32.onnx"
    onnx.save(fused_model(index_type=TensorProto.INT32), str(path))
    model = ov.convert_model(str(path), extension=str(ov_msda_library))
    compiled = ov.Core().compile_model(model, "CPU")
    value, shapes, starts, loc, weights = random_inputs([(6, 9), (3, 5)], 2, 9, seed=4)
    out = compiled([value, shapes.astype(np.int32), starts.astype(np.int32), loc, weights])[0]
    np.testing.assert_allclose(out, reference(value, shapes, loc, weights), atol=1e-4, rtol=0)


def test_float16_inputs(core, tmp_path):
    path = tmp_path / "msda_f16.onnx"
    onnx.save(fused_model(float_type=TensorProto.FLOAT16), str(path))
    compiled = core.compile_model(core.read_model(str(path)), "CPU")
    value, shapes, starts, loc, weights = random_inputs([(8, 6), (4, 3)], 1, 10, seed=5)
    value, loc, weights = (x.astype(np.float16) for x in (value, loc, weights))
    out = compiled([value, shapes, starts, loc, weights])[0]
    assert out.dtype == np.float16
    # Same f16-rounded inputs in float32 through the specification; the op computes in float32.
    expected = reference(value.astype(np.float32), shapes, loc.astype(np.float32), weights.astype(np.float32))
    np.testing.assert_allclose(out.astype(np.float32), expected, atol=1e-2, rtol=0)


def _to_bf16(x: np.ndarray):
    """float32 array -> (an OpenVINO bf16 tensor of it rounded to nearest even, that rounding as float32)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    tensor = ov.Tensor(ov.Type.bf16, list(x.shape))
    np.asarray(tensor.data).view(np.uint16)[...] = rounded
    return tensor, (rounded.astype(np.uint32) << 16).view(np.float32)


def _from_bf16(tensor) -> np.ndarray:
    return (np.asarray(tensor.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def test_bfloat16_inputs_match_float32_within_1e2(core, compiled, tmp_path):
    """bf16 value / locations / weights (what the CPU plugin feeds in bf16 inference), accumulated in f32: the
    result equals the f32 op on the same bf16-rounded inputs up to the bf16 rounding of the output."""
    path = tmp_path / "msda_bf16.onnx"
    onnx.save(fused_model(float_type=TensorProto.BFLOAT16), str(path))
    model = core.read_model(str(path))
    op = next(o for o in model.get_ordered_ops() if o.get_type_name() == "MultiScaleDeformableAttention")
    assert op.get_output_element_type(0) == ov.Type.bf16  # no Convert around the op
    value, shapes, starts, loc, weights = random_inputs([(8, 6), (4, 3)], 2, 10, seed=5)
    (tv, v), (tl, lc), (tw, w) = (_to_bf16(x) for x in (value, loc, weights))
    f32 = compiled([v, shapes, starts, lc, w])[0]  # the f32 op on the same rounded inputs
    out = ov.Tensor(ov.Type.bf16, list(f32.shape))
    assert op.evaluate([out], [tv, ov.Tensor(shapes), ov.Tensor(starts), tl, tw])
    got = _from_bf16(out)
    assert np.abs(got - f32).max() <= 1e-2 * np.abs(f32).max()
    np.testing.assert_allclose(got, f32, rtol=1e-2, atol=1e-6)
    np.testing.assert_allclose(f32, reference(v, shapes, lc, w), atol=1e-4, rtol=0)
    # and through the CPU plugin, whatever precision it runs the graph at on this CPU
    request = core.compile_model(model, "CPU").create_infer_request()
    request.infer([tv, ov.Tensor(shapes), ov.Tensor(starts), tl, tw])
    np.testing.assert_allclose(_from_bf16(request.get_output_tensor(0)), f32, rtol=1e-2, atol=1e-6)


def test_ir_round_trip(core, tmp_path):
    path = tmp_path / "msda.onnx"
    onnx.save(fused_model(), str(path))
    xml = tmp_path / "msda.xml"
    ov.save_model(core.read_model(str(path)), str(xml))
    assert 'type="MultiScaleDeformableAttention"' in xml.read_text()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU")
    value, shapes, starts, loc, weights = random_inputs([(5, 7), (3, 4)], 2, 8, seed=6)
    out = compiled([value, shapes, starts, loc, weights])[0]
    np.testing.assert_allclose(out, reference(value, shapes, loc, weights), atol=1e-4, rtol=0)


def test_shape_inference_and_validation(core, tmp_path):
    dims = {
        "value": [2, 30, 4, 8],
        "sampling_locations": [2, "Lq", 4, 2, 3, 2],
        "attention_weights": [2, "Lq", 4, 2, 3],
    }
    path = tmp_path / "msda.onnx"
    onnx.save(fused_model(dims=dims), str(path))
    assert core.read_model(str(path)).output(0).get_partial_shape() == ov.PartialShape([2, -1, 32])
    dims["attention_weights"] = [2, "Lq", 4, 2, 4]  # P disagrees with sampling_locations
    onnx.save(fused_model(dims=dims), str(path))
    with pytest.raises(Exception, match="attention_weights"):
        core.read_model(str(path))


_ISA_CHILD = """
import json, sys
import numpy as np, openvino as ov
lib, model, data = sys.argv[1:4]
core = ov.Core()
core.add_extension(lib)
compiled = core.compile_model(core.read_model(model), "CPU")
arrays = np.load(data)
names = sorted({key.split(".")[0] for key in arrays.files})
inputs = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
errors = {n: float(np.abs(compiled([arrays[f"{n}.{k}"] for k in inputs])[0] - arrays[f"{n}.expected"]).max())
          for n in names}
print(json.dumps(errors))
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_instruction_set_variant(ov_msda_library, tmp_path, isa):
    """Each code path (capped through EDGEDET_OV_MSDA_ISA in a fresh process) matches the
    specification for every specialised channel count (8, 16, 32, 64) and a generic one (5)."""
    arrays = {}
    for d, shapes in ((8, [(6, 7), (3, 4)]), (16, [(4, 9)]), (32, [(5, 3), (2, 2)]), (64, [(3, 5)]), (5, [(7, 2)])):
        value, shapes_arr, starts, loc, weights = random_inputs(shapes, 2, 9, d=d, seed=d)
        for key, array in zip(INPUTS, (value, shapes_arr, starts, loc, weights)):
            arrays[f"d{d}.{key}"] = array
        arrays[f"d{d}.expected"] = reference(value, shapes_arr, loc, weights)
    np.savez(tmp_path / "cases.npz", **arrays)
    onnx.save(fused_model(), str(tmp_path / "msda.onnx"))
    proc = subprocess.run(
        [sys.executable, "-c", _ISA_CHILD, str(ov_msda_library), str(tmp_path / "msda.onnx"),
         str(tmp_path / "cases.npz")],
        capture_output=True, text=True, env={**os.environ, "EDGEDET_OV_MSDA_ISA": isa}, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(errors) == {"d5", "d8", "d16", "d32", "d64"}
    assert max(errors.values()) < 1e-4, errors


# --- per-level point counts (RT-DETRv2 / D-FINE layout) and the `discrete` method -------------

PER_LEVEL_DIMS = {"sampling_locations": ["N", "Lq", "M", "K", 2], "attention_weights": ["N", "Lq", "M", "K"]}


def per_level_model(counts, method="default", float_type=TensorProto.FLOAT, dims=None) -> "onnx.ModelProto":
    """One fused node with attributes, as `converters.onnx.msda_forms` exports it."""
    model = fused_model(float_type=float_type, dims={**PER_LEVEL_DIMS, **(dims or {})})
    node = model.graph.node[0]
    if counts is not None:
        node.attribute.append(helper.make_attribute("num_points_per_level", list(counts)))
    if method != "default":
        node.attribute.append(helper.make_attribute("method", method))
    return model


def per_level_inputs(shapes, counts, n, lq, m=4, d=8, seed=0, per_level=True):
    rng = np.random.default_rng(seed)
    shapes = np.asarray(shapes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int64)
    value = rng.standard_normal((n, int((shapes[:, 0] * shapes[:, 1]).sum()), m, d), dtype=np.float32)
    k = sum(counts)
    loc = rng.uniform(-0.15, 1.15, (n, lq, m, k, 2)).astype(np.float32)
    weights = rng.uniform(0, 1, (n, lq, m, k)).astype(np.float32)
    if not per_level:  # uniform layout: same memory, P points on every level
        loc, weights = loc.reshape(n, lq, m, len(counts), -1, 2), weights.reshape(n, lq, m, len(counts), -1)
    return value, shapes, starts, loc, weights


def per_level_reference(value, shapes, loc, weights, counts, method) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from edgedet.ops import multi_scale_deformable_attention

    out = multi_scale_deformable_attention(
        *(torch.from_numpy(x) for x in (value, shapes, loc, weights)), num_points_per_level=counts, method=method
    )
    return out.numpy()


PER_LEVEL_CASES = [
    ([(7, 13), (4, 7), (2, 3)], (4, 3, 2), 1, 11, 8),  # wide (RT-DETRv2 [4, 3, 2])
    ([(13, 5), (6, 2), (3, 1)], (2, 1, 3), 3, 6, 32),  # tall, batch 3, single-column level
    ([(9, 6), (4, 3)], (4, 2), 2, 7, 5),  # channel count without a specialised kernel (D-FINE [4, 2])
    ([(10, 12), (5, 6), (3, 3), (2, 2)], (1, 2, 3, 4), 2, 40, 16),
]


@pytest.mark.parametrize("method", ["default", "discrete"])
@pytest.mark.parametrize("shapes, counts, n, lq, d", PER_LEVEL_CASES)
def test_per_level_matches_pytorch(core, tmp_path, method, shapes, counts, n, lq, d):
    path = tmp_path / "msda_per_level.onnx"
    onnx.save(per_level_model(counts, method), str(path))
    compiled = core.compile_model(core.read_model(str(path)), "CPU")
    value, shapes_arr, starts, loc, weights = per_level_inputs(shapes, counts, n, lq, d=d, seed=lq + d)
    out = compiled([value, shapes_arr, starts, loc, weights])[0]
    expected = per_level_reference(value, shapes_arr, loc, weights, counts, method)
    assert out.shape == expected.shape == (n, lq, 4 * d)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_uniform_discrete_and_attribute_ir_round_trip(core, tmp_path):
    """Uniform layout with method="discrete" (no point counts); attributes survive OpenVINO IR."""
    path = tmp_path / "msda_discrete.onnx"
    onnx.save(per_level_model(None, "discrete", dims=DYNAMIC_DIMS), str(path))
    xml = tmp_path / "msda_discrete.xml"
    ov.save_model(core.read_model(str(path)), str(xml))
    assert 'method="discrete"' in xml.read_text()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU")
    value, shapes, starts, loc, weights = per_level_inputs([(6, 11), (3, 6)], (3, 3), 2, 9, seed=3, per_level=False)
    out = compiled([value, shapes, starts, loc, weights])[0]
    np.testing.assert_allclose(out, per_level_reference(value, shapes, loc, weights, None, "discrete"), atol=1e-5, rtol=0)

    path = tmp_path / "msda_per_level.onnx"
    onnx.save(per_level_model((4, 3, 2), "default"), str(path))
    ov.save_model(core.read_model(str(path)), str(xml))
    assert 'num_points_per_level="4, 3, 2"' in xml.read_text()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU")
    value, shapes, starts, loc, weights = per_level_inputs([(8, 10), (4, 5), (2, 3)], (4, 3, 2), 2, 5, seed=4)
    out = compiled([value, shapes, starts, loc, weights])[0]
    np.testing.assert_allclose(out, per_level_reference(value, shapes, loc, weights, (4, 3, 2), "default"), atol=1e-5, rtol=0)


def test_discrete_border_and_non_finite_locations(core, tmp_path):
    """Rounding boundaries, the upstream clamp by H on a wide map and NaN (pixel 0, as PyTorch's int64
    cast + clamp reads it) as the specification; huge and infinite locations saturate at the border
    (PyTorch's int64 cast of those is platform-defined, so they are compared as +-10)."""
    path = tmp_path / "msda_discrete.onnx"
    onnx.save(per_level_model((1, 1), "discrete"), str(path))
    compiled = core.compile_model(core.read_model(str(path)), "CPU")
    value, shapes, starts, _, _ = per_level_inputs([(3, 8), (5, 2)], (1, 1), 1, 1, m=2, d=8, seed=7)
    xy = np.array([[0, 0], [1, 1], [0.5, 0.5], [1 / 16, 1 / 6], [0.9, 0.1], [-0.0624, 1.4], [1e30, 0.5],
                   [0.5, -1e30], [np.inf, 0.2], [0.2, -np.inf], [np.nan, 0.7], [0.3, np.nan]], dtype=np.float32)
    loc = np.broadcast_to(xy.reshape(1, -1, 1, 1, 2), (1, len(xy), 2, 2, 2)).copy()
    weights = np.random.default_rng(8).uniform(0.1, 1, (1, len(xy), 2, 2)).astype(np.float32)
    out = compiled([value, shapes, starts, loc, weights])[0]
    finite = np.where(np.isnan(loc), loc, np.clip(loc, -10, 10))
    np.testing.assert_allclose(out, per_level_reference(value, shapes, finite, weights, (1, 1), "discrete"), atol=1e-6, rtol=0)


def test_per_level_validation_errors(core, tmp_path):
    path = tmp_path / "msda.onnx"
    dims = {"value": [2, 30, 4, 8], "sampling_locations": [2, "Lq", 4, 9, 2], "attention_weights": [2, "Lq", 4, 9]}
    onnx.save(per_level_model((4, 3, 2), dims=dims), str(path))
    assert core.read_model(str(path)).output(0).get_partial_shape() == ov.PartialShape([2, -1, 32])
    onnx.save(per_level_model((4, 3, 1), dims=dims), str(path))
    with pytest.raises(Exception, match="num_points_per_level sums to 8"):
        core.read_model(str(path))
    onnx.save(per_level_model((4, 3, 2), "nearest", dims=dims), str(path))
    with pytest.raises(Exception, match="method must be"):
        core.read_model(str(path))
    onnx.save(per_level_model((4, 3, 2), dims={**dims, "sampling_locations": [2, "Lq", 4, 3, 3, 2]}), str(path))
    with pytest.raises(Exception, match=r"sampling_locations must be \[N, Lq, M, sum\(num_points_per_level\), 2\]"):
        core.read_model(str(path))


_ISA_PER_LEVEL_CHILD = """
import json, sys
import numpy as np, openvino as ov
lib, data = sys.argv[1:3]
core = ov.Core()
core.add_extension(lib)
arrays = np.load(data)
inputs = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
errors = {}
for name in sorted({key.split(".")[0] for key in arrays.files}):
    compiled = core.compile_model(core.read_model(data.replace("cases.npz", name + ".onnx")), "CPU")
    out = compiled([arrays[f"{name}.{k}"] for k in inputs])[0]
    errors[name] = float(np.abs(out - arrays[f"{name}.expected"]).max())
print(json.dumps(errors))
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_per_level_every_instruction_set_variant(ov_msda_library, tmp_path, isa):
    """Both methods on each code path for every specialised channel count and a generic one."""
    arrays = {}
    for method in ("default", "discrete"):
        for d, shapes, counts in ((8, [(6, 7), (3, 4)], (3, 2)), (16, [(4, 9)], (5,)), (32, [(5, 3), (2, 2)], (2, 4)),
                                  (64, [(3, 5)], (3,)), (5, [(7, 2), (2, 6)], (1, 2))):
            name = f"{method}_d{d}"
            value, shapes_arr, starts, loc, weights = per_level_inputs(shapes, counts, 2, 9, d=d, seed=d)
            for key, array in zip(INPUTS, (value, shapes_arr, starts, loc, weights)):
                arrays[f"{name}.{key}"] = array
            arrays[f"{name}.expected"] = per_level_reference(value, shapes_arr, loc, weights, counts, method)
            onnx.save(per_level_model(counts, method), str(tmp_path / f"{name}.onnx"))
    np.savez(tmp_path / "cases.npz", **arrays)
    proc = subprocess.run(
        [sys.executable, "-c", _ISA_PER_LEVEL_CHILD, str(ov_msda_library), str(tmp_path / "cases.npz")],
        capture_output=True, text=True, env={**os.environ, "EDGEDET_OV_MSDA_ISA": isa}, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 10 and max(errors.values()) < 1e-5, errors
