"""What the soak benches say about the machine they ran on: CPU model and flags, and its load while they ran
(figures from a shared, loaded machine are not comparable with an idle one's)."""
from __future__ import annotations

import os
import subprocess
from typing import Dict, List


def cpu_model() -> Dict[str, str]:
    """lscpu's model name and the SIMD flags that matter for the engines."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"cpu": "unknown", "cpu_flags": ""}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd")
    return {"cpu": fields.get("Model name", "unknown").strip(), "cpu_flags": " ".join(f for f in wanted if f in flags),
            "cpus": str(os.cpu_count())}


def load_summary(samples: List[float]) -> Dict[str, float]:
    """1-minute load averages sampled during the run -> start, mean, max, end."""
    if not samples:
        return {}
    return {"load_start": round(samples[0], 2), "load_mean": round(sum(samples) / len(samples), 2),
            "load_max": round(max(samples), 2), "load_end": round(samples[-1], 2)}
