"""What the soak benches say about the machine they ran on: CPU model and flags, and its load while they ran
(figures from a shared, loaded machine are not comparable with an idle one's)."""
from __future__ import annotations

import os
import subprocess
from typing import Dict, List


# The ISA flags that decide the engines' speed (SIMD width, INT8 dot products, bf16) on x86 and ARM.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile",
             "neon", "asimd")


def lscpu() -> Dict[str, object]:
    """lscpu's model name, CPU count and the ISA flags of `ISA_FLAGS` this CPU has (every bench prints them)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name", "unknown"), "cpus": fields.get("CPU(s)", str(os.cpu_count())),
            "isa": [f for f in ISA_FLAGS if f in flags]}


def load_average() -> List[float]:
    """The 1, 5 and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> Dict[str, str]:
    """lscpu's model name and the SIMD flags that matter for the engines."""
    facts = lscpu()
    return {"cpu": str(facts["model"]), "cpu_flags": " ".join(facts["isa"]), "cpus": str(facts["cpus"])}


def load_summary(samples: List[float]) -> Dict[str, float]:
    """1-minute load averages sampled during the run -> start, mean, max, end."""
    if not samples:
        return {}
    return {"load_start": round(samples[0], 2), "load_mean": round(sum(samples) / len(samples), 2),
            "load_max": round(max(samples), 2), "load_end": round(samples[-1], 2)}
