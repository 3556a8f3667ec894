"""The ``hparam-search`` command: parsing, printing, exit codes; the logic lives elsewhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hparam-search", description="Inspect hyperparameter searches run with hparam_search.")
    parser.add_argument("--version", action="version", version=f"hparam-search {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
