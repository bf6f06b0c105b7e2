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
from typing import Dict, List, Optional

from runtime.environment import entry_points_in

# edgedet's own commands, by module (each exposes COMMAND).
BUILTIN_COMMAND_MODULES = [
    "edgedet.commands.train",
    "edgedet.commands.evaluate",
    "edgedet.commands.convert_checkpoint",
]


# The extra each command needs beyond the torch-free base install (named in "unavailable" errors).
COMMAND_EXTRAS = {"train": "train", "eval": "train", "convert-checkpoint": "train", "export": "convert", "demo": "convert"}


def _load_commands() -> Dict[str, object]:
    commands: Dict[str, object] = {}
    for mod in BUILTIN_COMMAND_MODULES:
        try:
            cmd = importlib.import_module(mod).COMMAND
        except ImportError as e:
            name = mod.rsplit(".", 1)[-1].replace("evaluate", "eval").replace("_", "-")
            commands[name] = _Unavailable(name, str(e))
            continue
        commands[cmd.name] = cmd
    for ep in entry_points_in("edgedet.commands"):
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
        extra = COMMAND_EXTRAS.get(self.name, "all")
        print(f"edgedet {self.name}: unavailable ({self.reason}). Install the extra: pip install 'edgedet[{extra}]'", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgedet", description="DETR-family detectors from training to edge deployment.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in sorted(_load_commands().items()):
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        try:
            cmd.add_arguments(p)
        except ImportError as e:  # its arguments come from a package of a missing extra
            cmd = _Unavailable(name, str(e))
            p = argparse.ArgumentParser(prog=f"edgedet {name}", add_help=False)  # detached; arguments accepted as-is
            sub._name_parser_map[name] = p
            cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not isinstance(getattr(args, "_command", None), _Unavailable):  # those only say what to install
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "_command", None):
        parser.print_help()
        return 1
    try:
        return int(args._command.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ImportError as e:  # a dependency of an extra that is not installed
        if args.verbose:
            raise
        extra = COMMAND_EXTRAS.get(args.command, "all")
        hint = str(e) if "pip install" in str(e) else f"{e}; install the extra: pip install 'edgedet[{extra}]'"
        print(f"edgedet {args.command}: {hint}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # OSError: unwritable folder, full disk
        # Bad input: one line that says what to do, not a traceback (use -v for one).
        if args.verbose:
            raise
        from runtime.paths import folder_error_line

        print(f"edgedet {args.command}: error: {folder_error_line(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
