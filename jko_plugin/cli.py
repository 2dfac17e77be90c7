r"""The ``jko-flow`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``jko-flow``."""
    parser = argparse.ArgumentParser(prog="jko-flow", description="Train, sample and compare JKO flows.")
    parser.add_argument("--version", action="version", version=f"jko-plugin {__version__}")
    parser.add_subparsers(dest="command")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jko-flow``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
