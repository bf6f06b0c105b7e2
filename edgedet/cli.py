"""The `edgedet` command: subcommands gathered from this package and from plug-ins.

edgedet's own commands live in `edgedet/commands/`; `converters` (export, demo, bench) and
`runtime` (run) add theirs through the `edgedet.commands` entry-point group, so the
dependency arrows stay runtime <- edgedet <- converters.

A command is an object with `name`, `help`, `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import entry_points
from typing import Dict, List, Optional

# edgedet's own commands, by module (each exposes COMMAND).
BUILTIN_COMMAND_MODULES = [
    "edgedet.commands.train",
    "edgedet.commands.evaluate",
    "edgedet.commands.convert_checkpoint",
]


def _load_commands() -> Dict[str, object]:
    commands: Dict[str, object] = {}
    for mod in BUILTIN_COMMAND_MODULES:
        cmd = importlib.import_module(mod).COMMAND
        commands[cmd.name] = cmd
    for ep in entry_points(group="edgedet.commands"):
        try:
            cmd = ep.load()
        except ImportError as e:  # an extra that is not installed: say which
            commands[ep.name] = _Unavailable(ep.name, str(e))
            continue
        commands[cmd.name] = cmd
    return commands


class _Unavailable:
    """Stands in for a plug-in command whose dependencies are missing."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        self.help = f"(unavailable: {reason})"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("rest", nargs=argparse.REMAINDER)

    def run(self, args: argparse.Namespace) -> int:
        print(f"edgedet {self.name}: unavailable ({self.reason}). Install the extra: pip install 'edgedet[all]'", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgedet", description="DETR-family detectors from training to edge deployment.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in sorted(_load_commands().items()):
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "_command", None):
        parser.print_help()
        return 1
    try:
        return int(args._command.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # OSError: unwritable folder, full disk
        # Bad input: one line that says what to do, not a traceback (use -v for one).
        if args.verbose:
            raise
        print(f"edgedet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
