"""Subcommands of the `edgedet` CLI (see edgedet/cli.py)."""
