"""The docs' CLI reference lists every registered command with exactly what its --help prints."""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference_hook", REPO / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page() -> str:
    return _hook().render()


def _registered_commands():
    from edgedet.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_page_lists_every_registered_command(page):
    commands = _registered_commands()
    assert {"train", "eval", "export", "run", "predict", "val", "track", "benchmark", "demo"} <= set(commands)
    for name in commands:
        assert f"## `edgedet {name}`" in page, f"edgedet {name} missing from the CLI reference"
        assert f"usage: edgedet {name}" in page
    assert "## `edgedet-run`" in page and "usage: edgedet-run" in page


@pytest.mark.parametrize("argv", [["-m", "edgedet.cli", "train", "--help"], ["-m", "edgedet.cli", "export", "--help"],
                                  ["-m", "runtime.cli", "--help"]])
def test_page_holds_what_help_prints(page, argv):
    env = dict(os.environ, COLUMNS=_hook().HELP_COLUMNS, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in page


def test_page_lists_the_commands_setup_py_declares(page):
    # The `edgedet.commands` entry points of setup.py (an installed copy may lag behind the source).
    import re

    text = (REPO / "setup.py").read_text(encoding="utf-8")
    block = text[text.index('"edgedet.commands"'):]
    block = block[:block.index("]")]
    declared = re.findall(r'"([\w-]+)=[\w.]+:\w+"', block)
    assert len(declared) >= 7
    for name in declared:
        assert f"## `edgedet {name}`" in page, f"setup.py's edgedet {name} is not in the CLI reference (pip install -e . again?)"
