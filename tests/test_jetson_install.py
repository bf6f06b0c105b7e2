"""Installs on JetPack 5 (Python 3.8) and 6 (Python 3.10), checked without a Jetson (issue #31).

- the torch-free code a Jetson runs (runtime/, and every module `edgedet` / `edgedet-run` import
  without torch) needs nothing newer than Python 3.8, by vermin's static check (the real 3.8 run
  is scripts/check_runtime_base_install.sh, which uses the oldest Python it finds);
- requirements/jetson.txt (the Jetson install: base deps without the OpenCV wheel) stays in step
  with setup.py; the `tensorrt` extra never pulls pip's TensorRT / CUDA bindings on aarch64.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Imports what a Jetson without torch imports for `edgedet <cmd>` and `edgedet-run`, and prints our files among them.
_LOADED_WITHOUT_TORCH = r"""
import json, sys
from pathlib import Path
for name in ("torch", "torchvision"):
    sys.modules[name] = None  # their import now raises ImportError, as on a Jetson without PyTorch
import runtime, runtime.cli, runtime.models
from edgedet.cli import build_parser
build_parser()
root = Path.cwd().resolve()
files = set()
for module in list(sys.modules.values()):
    f = getattr(module, "__file__", None)
    if f and root in Path(f).resolve().parents:
        files.add(str(Path(f).resolve().relative_to(root)))
print(json.dumps(sorted(files)))
"""


def _vermin(*args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("vermin") is None:
        pytest.skip("vermin is not installed (pip install 'edgedet[test]')")
    return subprocess.run([sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())",
                           "--no-tips", "--violations", "-t=3.8-", *args], capture_output=True, text=True, timeout=300)


def _torch_free_files() -> list:
    out = subprocess.run([sys.executable, "-c", _LOADED_WITHOUT_TORCH], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout))
    return sorted(loaded | {str(p.relative_to(ROOT)) for p in (ROOT / "runtime").rglob("*.py")})


def test_vermin_flags_newer_syntax(tmp_path):
    # The checker itself can fail: a 3.9-only call is reported against the 3.8 target.
    bad = tmp_path / "new.py"
    bad.write_text('print("x_y".removeprefix("x_"))\n')
    out = _vermin(str(bad))
    assert out.returncode != 0 and "removeprefix" in out.stdout, out.stdout


def test_torch_free_code_needs_only_python_3_8():
    files = _torch_free_files()
    assert {"runtime/cli.py", "runtime/capture.py", "edgedet/cli.py", "runtime/commands/benchmark.py"} <= set(files)
    assert not any(f.startswith("edgedet/models") for f in files), "edgedet's models import torch"
    out = _vermin(*[str(ROOT / f) for f in files])
    assert out.returncode == 0, f"needs newer than Python 3.8:\n{out.stdout[-3000:]}"
    assert re.search(r"Minimum required versions: 3\.[0-8]\b", out.stdout), out.stdout[-500:]


def _setup_lists() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            found[node.targets[0].id] = [ast.literal_eval(e) for e in node.value.elts]
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    found["python_requires"] = next(ast.literal_eval(k.value) for k in call.keywords if k.arg == "python_requires")
    return found


def _requirement_name(text: str) -> str:
    return re.split(r"[<>=!;\s\[]", text.strip(), maxsplit=1)[0].lower()


def test_jetson_requirements_are_the_base_without_the_opencv_wheel():
    setup = _setup_lists()
    assert setup["python_requires"] == ">=3.8"
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements" / "jetson.txt").read_text().splitlines()]
    jetson = {_requirement_name(ln): ln for ln in lines if ln}
    base = {_requirement_name(r): r for r in setup["RUNTIME"]}
    assert not any(name.startswith("opencv") for name in jetson), "the Jetson install must not bring an OpenCV wheel"
    assert set(jetson) == set(base) - {"opencv-python-headless"}
    for name, requirement in base.items():
        if name in jetson:  # the same lower bound as setup.py (numpy is also capped below 2 for JetPack's OpenCV)
            assert jetson[name].startswith(requirement), (jetson[name], requirement)
    assert jetson["numpy"] == "numpy>=1.24,<2"


def test_tensorrt_extra_leaves_jetpack_alone():
    for requirement in _setup_lists()["TENSORRT"]:
        assert requirement.replace(" ", "").endswith(';platform_machine!="aarch64"'), requirement
