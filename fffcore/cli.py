"""The ``fff`` command. Each subcommand lives in its own module under :mod:`fffcore.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: Subcommand modules; each defines ``add_parser(subparsers)``, which sets ``func``
#: (taking the parsed arguments, returning the exit code) as the parser default.
COMMAND_MODULES: tuple[str, ...] = (
    "fffcore.commands.backends",
    "fffcore.commands.compare",
    "fffcore.commands.check",
    "fffcore.commands.warmup",
    "fffcore.commands.apply",
)


def build_parser() -> argparse.ArgumentParser:
    from fffcore import __version__

    parser = argparse.ArgumentParser(prog="fff", description="fast feedforward (FFF) inference: fffcore's command line")
    parser.add_argument("--version", action="version", version=f"fffcore {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 2
    try:
        code = int(arguments.func(arguments))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, rather than at exit
    except BrokenPipeError:
        # The reader went away (`fff backends --json | head`): stop quietly, as command-line tools do.
        # Python flushes stdout again at exit, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
