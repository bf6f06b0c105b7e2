"""Which inference precision an OpenVINO CPU artifact runs at: `precision="auto"`.

bf16 roughly halves DETR latency on CPUs with AMX-BF16 or AVX512-BF16 (OpenVINO's own default there),
but it is not exact. "auto" takes it only when both hold:
  - the CPU computes bf16 natively: OpenVINO lists BF16 in its OPTIMIZATION_CAPABILITIES and, where
    /proc/cpuinfo is readable, the CPU flags include amx_bf16 or avx512_bf16 (OpenVINO also lists BF16
    for CPUs that only convert to it);
  - the artifact's manifest records that bf16 passed its parity check (`edgedet export --verify` runs
    the artifact in bf16 and compares its top-K detections with PyTorch's);
and f32 otherwise, with the reason. "f32" (and "bf16", "f16") stay available as explicit requests.

The record lives in `manifest.extra["precision_checks"]`: precision -> {"status": "passed" | "failed" |
"untested", "topk_match", "box_max_abs_diff_px", "reason"}.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional, Set, Tuple

log = logging.getLogger(__name__)

CHECKS_KEY = "precision_checks"
# A precision passes its parity check when its top-K detections keep this share of PyTorch's (label + IoU >= 0.9).
MIN_TOPK_MATCH = 0.9
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
PRECISIONS = ("auto", "f32", "bf16", "f16")


@dataclass(frozen=True)
class Capability:
    """What this CPU computes natively in bf16, and how we know."""

    bf16: bool
    reason: str


@dataclass(frozen=True)
class PrecisionChoice:
    """The INFERENCE_PRECISION_HINT given to OpenVINO ("" = the device's own default) and why."""

    precision: str
    reason: str
    requested: str


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[FrozenSet[str]]:
    """The CPU's feature flags from /proc/cpuinfo, or None where it cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def bf16_capability(ov_capabilities: Any, flags: Optional[FrozenSet[str]]) -> Capability:
    """Native bf16 from OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU and the CPU flags (None = unknown)."""
    caps = {str(c).upper() for c in (ov_capabilities or ())}
    if "BF16" not in caps:
        have = [f for f in BF16_FLAGS if flags and f in flags]
        extra = f" (although the CPU flags list {', '.join(have)}: OpenVINO too old?)" if have else ""
        return Capability(False, f"OpenVINO lists no BF16 for this CPU{extra}")
    if flags is None:
        return Capability(True, "OpenVINO lists BF16 for this CPU")
    have = [f for f in BF16_FLAGS if f in flags]
    if not have:
        return Capability(False, "the CPU has neither AMX-BF16 nor AVX512-BF16 (OpenVINO's BF16 here would be emulated)")
    return Capability(True, f"the CPU has {' and '.join(f.upper().replace('_', '-') for f in have)}")


def cpu_bf16_capability(core: Any) -> Capability:
    """This machine's bf16 capability, asked of an `openvino.Core`."""
    try:
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception as e:  # no CPU plugin: nothing to choose
        return Capability(False, f"OpenVINO cannot describe the CPU ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})")
    return bf16_capability(caps, cpu_flags())


def precision_checks(manifest: Any) -> Dict[str, Dict[str, Any]]:
    """The manifest's parity records ({} when it has none, e.g. an export without --verify)."""
    extra = getattr(manifest, "extra", None)
    checks = extra.get(CHECKS_KEY) if isinstance(extra, dict) else None
    return {k: v for k, v in checks.items() if isinstance(v, dict)} if isinstance(checks, dict) else {}


def check_status(topk_match: Optional[float]) -> str:
    """A parity figure -> "passed" / "failed" ("untested" when it could not be measured)."""
    if topk_match is None:
        return "untested"
    return "passed" if topk_match >= MIN_TOPK_MATCH else "failed"


def choose_precision(requested: Optional[str], device: str, manifest: Any, capability: Optional[Capability]) -> PrecisionChoice:
    """The precision to compile at. `capability` is only consulted for "auto" on a CPU (None = not asked)."""
    req = "" if requested is None else str(requested).lower()
    if req not in PRECISIONS + ("",):
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (or None for the device default), got {requested!r}")
    if req != "auto":
        return PrecisionChoice(req, "requested" if req else "the device's default (requested)", req or "default")
    if not device.upper().startswith("CPU"):
        return PrecisionChoice("f32", f"auto picks bf16 on CPUs only; {device} runs f32 (exact)", "auto")
    if capability is None or not capability.bf16:
        return PrecisionChoice("f32", (capability.reason if capability else "CPU bf16 support unknown") + ": f32", "auto")
    record = precision_checks(manifest).get("bf16")
    if record is None:
        return PrecisionChoice("f32", f"{capability.reason}, but the artifact records no bf16 parity check "
                                      "(re-export with `edgedet export --verify`): f32", "auto")
    status = record.get("status")
    if status == "passed":
        return PrecisionChoice("bf16", f"{capability.reason} and bf16 passed this artifact's parity check"
                                       f"{_figures(record)}", "auto")
    what = "failed" if status == "failed" else "was not measured in"
    return PrecisionChoice("f32", f"{capability.reason}, but bf16 {what} this artifact's parity check{_figures(record)}: f32",
                           "auto")


def _figures(record: Dict[str, Any]) -> str:
    parts = []
    if isinstance(record.get("topk_match"), (int, float)):
        parts.append(f"top-K agreement {record['topk_match']:.3f}")
    if isinstance(record.get("box_max_abs_diff_px"), (int, float)):
        parts.append(f"max box deviation {record['box_max_abs_diff_px']:.2f} px")
    if record.get("reason") and not parts:
        parts.append(str(record["reason"]))
    return f" ({', '.join(parts)})" if parts else ""


_said: Set[Tuple[str, str, str]] = set()


def announce(artifact: str, choice: PrecisionChoice) -> None:
    """Say the automatic choice and its reason once per artifact and outcome in this process."""
    key = (artifact, choice.precision, choice.reason)
    if choice.requested != "auto" or key in _said:
        return
    _said.add(key)
    log.info("%s: inference precision %s (auto: %s)", Path(artifact).name, choice.precision, choice.reason)
