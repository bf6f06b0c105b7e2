"""precision="auto": bf16 only where the CPU computes it natively AND the artifact's bf16 parity check passed."""
import dataclasses
import logging

import numpy as np
import pytest

from runtime.manifest import read_sidecar, write_sidecar
from runtime.precision import (CHECKS_KEY, Capability, announce, bf16_capability, check_status, choose_precision,
                               cpu_flags)
from runtime.testing import make_blob_artifact

AMX = Capability(True, "the CPU has AMX-BF16")
AVX2 = Capability(False, "the CPU has neither AMX-BF16 nor AVX512-BF16")


def _manifest(tmp_path, status=None, topk=None):
    path = make_blob_artifact(tmp_path)
    man = read_sidecar(path)
    if status is not None:
        man.extra[CHECKS_KEY] = {"bf16": {"status": status, "topk_match": topk, "box_max_abs_diff_px": 0.5}}
    return man


def test_capability_needs_openvino_and_the_cpu_flags(tmp_path):
    # OpenVINO lists BF16 and the CPU has AMX / AVX512-BF16: native
    assert bf16_capability(["FP32", "BF16", "INT8"], frozenset({"avx2", "amx_bf16", "amx_tile"})).bf16
    assert "AVX512-BF16" in bf16_capability(["BF16"], frozenset({"avx512_bf16"})).reason
    # OpenVINO's BF16 on a CPU with neither flag (emulated), or no BF16 from OpenVINO (this AVX2 EPYC): not native
    assert not bf16_capability(["FP32", "BF16"], frozenset({"avx2", "avx512f"})).bf16
    no = bf16_capability(["FP32", "INT8", "BIN"], frozenset({"avx2", "fma"}))
    assert not no.bf16 and "no BF16" in no.reason
    assert bf16_capability(["BF16"], None).bf16  # no /proc/cpuinfo: OpenVINO's word
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 amx_bf16\n")
    assert cpu_flags(info) == frozenset({"fpu", "avx2", "amx_bf16"})
    assert cpu_flags(tmp_path / "absent") is None


def test_auto_picks_bf16_only_where_the_cpu_says_so(tmp_path):
    passed = _manifest(tmp_path, "passed", 0.97)
    on_amx = choose_precision("auto", "CPU", passed, AMX)
    assert on_amx.precision == "bf16" and "passed" in on_amx.reason and "0.970" in on_amx.reason
    on_avx2 = choose_precision("auto", "CPU", passed, AVX2)
    assert on_avx2.precision == "f32" and "neither AMX-BF16" in on_avx2.reason
    assert choose_precision("auto", "GPU", passed, AMX).precision == "f32"
    # explicit requests are kept as they are: f32 for exact work
    assert choose_precision("f32", "CPU", passed, AMX).precision == "f32"
    assert choose_precision("bf16", "CPU", passed, AVX2).precision == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("int4", "CPU", passed, AMX)


def test_auto_falls_back_to_f32_when_the_parity_check_failed_or_is_missing(tmp_path):
    failed = choose_precision("auto", "CPU", _manifest(tmp_path / "a", "failed", 0.62), AMX)
    assert failed.precision == "f32" and "bf16 failed this artifact's parity check" in failed.reason and "0.620" in failed.reason
    untested = choose_precision("auto", "CPU", _manifest(tmp_path / "b", "untested"), AMX)
    assert untested.precision == "f32" and "not measured" in untested.reason
    none = choose_precision("auto", "CPU", _manifest(tmp_path / "c"), AMX)
    assert none.precision == "f32" and "--verify" in none.reason
    assert check_status(0.9) == "passed" and check_status(0.89) == "failed" and check_status(None) == "untested"


def test_the_choice_is_said_once(caplog):
    choice = choose_precision("auto", "CPU", None, AVX2)
    with caplog.at_level(logging.INFO, logger="runtime.precision"):
        announce("/x/once-model.xml", choice)
        announce("/x/once-model.xml", choice)
        announce("/x/once-model.xml", choose_precision("f32", "CPU", None, AVX2))  # explicit: nothing to explain
    said = [r.getMessage() for r in caplog.records if "once-model.xml" in r.getMessage()]
    assert said == ["once-model.xml: inference precision f32 (auto: the CPU has neither AMX-BF16 nor AVX512-BF16: f32)"]


def _openvino_blob(tmp_path, status):
    ov = pytest.importorskip("openvino")
    onnx_path = make_blob_artifact(tmp_path)
    xml = tmp_path / "blob.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    man = dataclasses.replace(read_sidecar(onnx_path), backend="openvino")
    man.extra[CHECKS_KEY] = {"bf16": {"status": status, "topk_match": 0.95 if status == "passed" else 0.5}}
    write_sidecar(man, xml)
    return xml


@pytest.mark.parametrize("status", ["passed", "failed"])
def test_openvino_backend_compiles_at_the_auto_choice(tmp_path, monkeypatch, status):
    import runtime.backends.openvino as backend_mod
    from runtime import Detector

    xml = _openvino_blob(tmp_path, status)
    monkeypatch.setattr(backend_mod, "cpu_bf16_capability", lambda core: AMX)  # a CPU with AMX, mocked
    det = Detector(xml)  # precision defaults to auto
    choice = det.backend.precision_choice
    if status == "failed":
        assert choice.precision == "f32" and "failed" in choice.reason
    else:  # asked for bf16; a CPU without it (like this AVX2 one) compiles f32 and the reason says so
        assert choice.precision == "bf16" or "the device compiled it at f32" in choice.reason
        assert "passed" in choice.reason
    assert det.backend.inference_precision.startswith(choice.precision + " (auto: ")
    exact = Detector(xml, precision="f32").backend.precision_choice
    assert exact.precision == "f32" and exact.requested == "f32"
    frame = np.zeros((96, 128, 3), np.uint8)
    assert len(det(frame)) == len(Detector(xml, precision="f32")(frame))


def test_benchmark_records_the_precision_each_engine_runs_at(tmp_path, monkeypatch):
    import runtime.backends.openvino as backend_mod
    from runtime.commands.benchmark import benchmark, format_table

    xml = _openvino_blob(tmp_path, "passed")
    monkeypatch.setattr(backend_mod, "cpu_bf16_capability", lambda core: AVX2)
    result = benchmark([str(xml)], iters=2, quick=True, project=str(tmp_path / "runs"), quiet=True)
    row = result["rows"][0]
    assert row["runs_as"] == "f32 (auto: the CPU has neither AMX-BF16 nor AVX512-BF16: f32)"
    assert "runs as f32 (auto: the CPU has neither" in format_table(result)
    assert "runs_as" in (tmp_path / "runs").rglob("results.csv").__next__().read_text().splitlines()[0]
