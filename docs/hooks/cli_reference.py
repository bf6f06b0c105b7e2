"""MkDocs hook: the CLI reference page, written at build time from the argparse definitions.

`edgedet <command> --help` and the page come from the same parser objects (`edgedet.cli.build_parser`,
`runtime.cli.build_parser` for `edgedet-run`), so help and docs cannot disagree. The page is
`reference/cli.md`; it exists only in the built site (nothing to keep in sync in git).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE = "reference/cli.md"
HELP_COLUMNS = "80"  # argparse wraps to $COLUMNS: fixed, so the page does not depend on the builder's terminal


def _import_repo_packages() -> None:
    # mkdocs' own bin folder is first on sys.path; the packages of this checkout must win over any installed copy.
    root = str(REPO_ROOT)
    if root not in sys.path[:1]:
        sys.path.insert(0, root)


def command_parsers() -> List[Tuple[str, argparse.ArgumentParser]]:
    """(`edgedet <command>` or `edgedet-run`, its parser) for every registered command, in page order."""
    _import_repo_packages()
    from edgedet.cli import _Unavailable, build_parser
    from runtime.cli import build_parser as build_run_parser

    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    parsers = [("edgedet", top)]
    for name, parser in sorted(sub.choices.items()):
        command = parser.get_default("_command")
        if isinstance(command, _Unavailable):  # a reference page must not publish "install the extra"
            raise RuntimeError(f"edgedet {name} is unavailable while building the docs ({command.reason}); "
                               "install every extra the docs describe: pip install -e '.[all,docs]'")
        parsers.append((f"edgedet {name}", parser))
    parsers.append(("edgedet-run", build_run_parser()))
    return parsers


def format_help(parser: argparse.ArgumentParser) -> str:
    """What `--help` prints, at a fixed width."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        return parser.format_help()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _anchor(command: str) -> str:
    return command.replace(" ", "-")


def render() -> str:
    """The Markdown of the CLI reference page."""
    parsers = command_parsers()
    lines = [
        "# CLI reference",
        "",
        "Generated when the site is built, from the same argparse definitions the commands use:",
        "each section is exactly what `--help` prints (at 80 columns). Commands are quiet by",
        "default; `edgedet -v COMMAND ...` shows every log line and full tracebacks.",
        "",
    ]
    lines += [f"- [`{command}`](#{_anchor(command)})" for command, _ in parsers]
    lines.append("")
    for command, parser in parsers:
        lines += [f"## `{command}` {{#{_anchor(command)}}}", "", "```text", format_help(parser).rstrip(), "```", ""]
    return "\n".join(lines)


def on_files(files, config):  # mkdocs hook
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files
