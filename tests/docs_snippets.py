"""The code blocks of the docs' task pages and how each one is tested (tests/test_docs_snippets.py).

Every fenced block on a task page carries a marker, an HTML comment on the line just before it (not shown
on the site), that says what the test does with it:

    <!-- snippet: run -->                          executed as written
    <!-- snippet: run | --epochs 12 => --epochs 1 -->   executed with these text replacements (smaller settings)
    <!-- snippet: slow | ... -->                   executed only in the slow run (pytest -m slow), replacements as above
    <!-- snippet: file data.yaml -->               written to that file in the page's folder (for later blocks)
    <!-- snippet: skip needs a Jetson -->         not run here; the reason is required

`text` blocks are command output or pictures made of characters, not code: they need no marker.
The blocks of one page run in order in one temporary folder (what one block writes, the next can read),
bash blocks with `bash -e`, python blocks with `python`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# The pages whose blocks must all be tested (a page joins this list once its blocks carry markers).
TASK_PAGES = ["index.md", "data.md", "train.md", "rfdetr.md", "export.md", "deploy.md", "jetson.md",
              "performance.md", "reliability.md", "architecture.md"]

MODES = ("run", "slow", "file", "skip")
FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(.*?)\s*-->\s*$")
RUN_LANGUAGES = ("bash", "python")


@dataclass
class Snippet:
    page: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    mode: str = ""  # run | slow | file | skip; "" = no marker (an error on a task page)
    argument: str = ""  # the skip reason or the file name
    replacements: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"

    def prepared(self) -> str:
        """The code as the test runs it: every replacement applied (each must match)."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise AssertionError(f"{self.where}: replacement {old!r} does not occur in the block")
            code = code.replace(old, new)
        return code


def _parse_marker(text: str, where: str) -> Tuple[str, str, List[Tuple[str, str]]]:
    parts = [p.strip() for p in text.split(" | ")]
    head = parts[0].split(None, 1)
    mode, argument = head[0], (head[1] if len(head) > 1 else "")
    if mode not in MODES:
        raise AssertionError(f"{where}: unknown snippet mode {mode!r} (one of {', '.join(MODES)})")
    if mode in ("skip", "file") and not argument:
        raise AssertionError(f"{where}: `snippet: {mode}` needs {'a reason' if mode == 'skip' else 'a file name'}")
    replacements = []
    for part in parts[1:]:
        if " => " not in part:
            raise AssertionError(f"{where}: replacement {part!r} is not `OLD => NEW`")
        old, new = part.split(" => ", 1)
        replacements.append((old, new))
    return mode, argument, replacements


def page_snippets(page: str) -> List[Snippet]:
    """Every fenced block of docs/<page> with its marker."""
    lines = (DOCS / page).read_text(encoding="utf-8").split("\n")
    snippets: List[Snippet] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, language = m.group(1), m.group(2), m.group(3) or "text"
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]) + "\n"
        snippet = Snippet(page, i + 1, language, code)
        previous = lines[i - 1] if i > 0 else ""
        marker = MARKER.match(previous)
        if marker:
            snippet.mode, snippet.argument, snippet.replacements = _parse_marker(marker.group(1), snippet.where)
        snippets.append(snippet)
        i = end + 1
    return snippets


def checked_snippets(page: str) -> List[Snippet]:
    """The page's blocks, each code block marked and each runnable one in a language the test runs."""
    out = []
    for s in page_snippets(page):
        if s.language == "text" and not s.mode:
            continue
        if not s.mode:
            raise AssertionError(f"{s.where}: a {s.language} block without a `<!-- snippet: ... -->` marker on the line "
                                 "before it (run, slow, file NAME or skip REASON; see tests/docs_snippets.py)")
        if s.mode in ("run", "slow") and s.language not in RUN_LANGUAGES:
            raise AssertionError(f"{s.where}: cannot run a {s.language} block (only {', '.join(RUN_LANGUAGES)})")
        out.append(s)
    return out
