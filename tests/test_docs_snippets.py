"""The docs cannot rot: every code block of a task page is run (small settings) or says why it cannot be.

Markers and modes: tests/docs_snippets.py. Each page's blocks run in order in one temporary folder that
links the repository's folders (so `edgedet/assets/...`, `configs/`, `examples/` resolve as in the docs)
and `../shared` beside it when present. Commands run as `edgedet ...` from this checkout's packages.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docs_snippets import DOCS, REPO, TASK_PAGES, Snippet, checked_snippets, page_snippets

SHARED = REPO.parent / "shared"
LINKED = ["edgedet", "runtime", "converters", "configs", "examples", "benches", "scripts", "docs"]
BLOCK_TIMEOUT_S = 300
# Pages with blocks to run (a bad marker fails test_every_block_is_marked, not the collection).
FAST_PAGES = [p for p in TASK_PAGES if (DOCS / p).is_file() and any(s.mode == "run" for s in page_snippets(p))]
SLOW_PAGES = [p for p in TASK_PAGES if (DOCS / p).is_file() and any(s.mode == "slow" for s in page_snippets(p))]


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "edgedet"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(REPO / name, target_is_directory=True)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    return work


def _env(work: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")  # this checkout's packages win
    # `edgedet` in a block = this checkout's CLI, whatever copy the console script would import.
    bindir = work.parent / "bin"
    bindir.mkdir(exist_ok=True)
    for command, module in (("edgedet", "edgedet.cli"), ("edgedet-run", "runtime.cli")):
        script = bindir / command
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        script.chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    env["MPLBACKEND"] = "Agg"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _run(snippet: Snippet, work: Path, env: dict) -> bool:
    """Run one block -> False when it needs `../shared` and that is absent (no later block reads its outputs)."""
    code = snippet.prepared()
    if "../shared" in code and not SHARED.is_dir() and snippet.mode != "file":
        return False
    if snippet.mode == "file":
        (work / snippet.argument).parent.mkdir(parents=True, exist_ok=True)
        (work / snippet.argument).write_text(code, encoding="utf-8")
        return True
    argv = ["bash", "-e", "-o", "pipefail", "-c", code] if snippet.language == "bash" else [sys.executable, "-c", code]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    print(f"{snippet.where}: {time.monotonic() - start:.1f} s")  # shown with -s: where the page's time goes
    if proc.returncode != 0:
        tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-3000:]).strip()
        raise AssertionError(f"{snippet.where} ({snippet.language}) exited {proc.returncode}:\n{code}\n--- output ---\n{tail}")
    return True


def _run_page(page: str, tmp_path: Path, modes) -> int:
    work = _workdir(tmp_path)
    env = _env(work)
    ran, without_shared = 0, []
    for snippet in checked_snippets(page):
        if snippet.mode in modes:
            if _run(snippet, work, env):
                ran += snippet.mode != "file"
            else:
                without_shared.append(snippet.where)
    if without_shared and not ran:
        pytest.skip(f"{', '.join(without_shared)} read ../shared, which is not present")
    return ran


@pytest.mark.parametrize("page", TASK_PAGES)
def test_every_block_is_marked(page):
    snippets = checked_snippets(page)  # raises on an unmarked block or a bad marker
    for s in snippets:
        if s.mode in ("run", "slow"):
            s.prepared()  # every replacement still matches the text
        if s.mode == "skip":
            assert len(s.argument.split()) >= 3, f"{s.where}: say why it cannot run here: {s.argument!r}"


def test_skips_stay_few():
    snippets = [s for p in TASK_PAGES for s in checked_snippets(p)]
    skipped = [s for s in snippets if s.mode == "skip"]
    code = [s for s in snippets if s.mode != "file"]
    # Blocks that cannot run here (a Jetson, TensorRT, downloads, hour-long trainings) stay a minority.
    assert len(skipped) <= len(code) // 2, "\n".join(f"{s.where}: {s.argument}" for s in skipped)


def test_marker_parsing_rejects_unmarked_blocks(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```bash\necho hi\n```\n\n<!-- snippet: run | hi => there -->\n```bash\necho hi\n```\n"
                    "\n```text\noutput\n```\n", encoding="utf-8")
    monkeypatch.setattr("docs_snippets.DOCS", tmp_path)
    blocks = page_snippets("page.md")
    assert [(b.line, b.mode, b.language) for b in blocks] == [(3, "", "bash"), (8, "run", "bash"), (12, "", "text")]
    assert blocks[1].prepared() == "echo there\n"
    with pytest.raises(AssertionError, match="without a `<!-- snippet"):
        checked_snippets("page.md")


@pytest.mark.parametrize("page", FAST_PAGES)
def test_page_blocks_run(page, tmp_path):
    assert _run_page(page, tmp_path, ("run", "file")) > 0


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PAGES)
def test_page_blocks_run_slow(page, tmp_path):
    assert _run_page(page, tmp_path, ("run", "slow", "file")) > 0


def test_task_pages_exist_and_are_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for page in TASK_PAGES:
        assert (DOCS / page).is_file(), page
        assert f": {page}" in nav, f"{page} is not in mkdocs.yml's nav"


def test_readme_is_short_and_its_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "README.md is the front page: keep it under 200 lines, move the rest into docs/"
    import re

    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert len(links) >= 10
    for link in links:
        assert (REPO / link).is_file(), f"README links to a missing {link}"
    for command in ("bash scripts/setup.sh && edgedet demo", "bash scripts/test.sh"):
        assert f"```bash\n{command}\n```" in text, f"README lost its command {command!r}"
