"""The reference fixtures in ../shared/fixtures/reference/<family>/ (each made by the official repository's
own code, README there): where they are, how to read one, and the one closeness check their tests use."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference"


def read_reference(folder: Path) -> Tuple[Dict[str, Any], Any, Any, Any]:
    """-> (meta.json, inputs.npz, outputs.npz, intermediates.npz) of one fixture folder."""
    return (json.loads((folder / "meta.json").read_text()), np.load(folder / "inputs.npz"),
            np.load(folder / "outputs.npz"), np.load(folder / "intermediates.npz"))


def assert_matches_reference(name: str, got: Any, ref: np.ndarray, tol: float) -> None:
    """Integer and boolean outputs equal exactly; floats within `tol` (max absolute difference)."""
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != reference {ref.shape}"
    if ref.dtype.kind in "iub":
        np.testing.assert_array_equal(got, ref, err_msg=name)
    else:
        err = float(np.abs(got.astype(np.float64) - ref).max())
        assert err <= tol, f"{name}: max |diff| {err:.3g} > {tol}"


def run_recording(model: torch.nn.Module, image: np.ndarray) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The model's outputs on one fixture image and the intermediates it records (name -> tensor)."""
    record: Dict[str, Any] = {}
    with torch.no_grad():
        out = model(torch.from_numpy(image), record=record)
    return out, record


def check_recorded_intermediates(record: Dict[str, Any], intermediates: Any, img: str, tol: float,
                                 skip: Sequence[str] = (), tols: Optional[Dict[str, float]] = None) -> int:
    """Every intermediate the fixture holds for image `img` (but names containing a `skip` fragment) was
    recorded by the model and matches the reference (within tols[name], else tol). -> how many were checked."""
    checked = 0
    for key in intermediates.files:
        name = key[len(img) + 1:]
        if not key.startswith(img + ".") or any(fragment in name for fragment in skip):
            continue
        assert name in record, f"intermediate {name} is not recorded by the model"
        assert_matches_reference(key, record[name], intermediates[key], (tols or {}).get(name, tol))
        checked += 1
    return checked
