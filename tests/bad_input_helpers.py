"""Shared helpers of the bad-input tests (tests/test_bad_inputs*.py)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.manifest import sidecar_path
from runtime.testing import make_blob_artifact


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_line(text: str) -> str:
    text = str(text).strip()
    assert len(text.splitlines()) == 1, text
    assert "weights_only=False" not in text and "weights_only` set to `False" not in text, text
    return text


@pytest.fixture()
def artifact(tmp_path):
    return make_blob_artifact(tmp_path / "model")


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i}.jpg"), np.full((48, 64, 3), 60 + 40 * i, np.uint8))
    return folder


def _edit_sidecar(artifact: Path, **changes) -> None:
    data = json.loads(sidecar_path(artifact).read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    sidecar_path(artifact).write_text(json.dumps(data))
