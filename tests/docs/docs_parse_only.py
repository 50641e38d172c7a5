"""Run a documented command only as far as its argument parsing: ``python docs_parse_only.py fff check ...``.

Exit status 0 when the command's arguments parse (the command itself is not run), argparse's 2 with its
message when they do not, 1 when the command reached no ``parse_args`` at all. The docs test checks this
way the documented commands that take minutes; ``pytest --docs-full`` runs them in full.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys


class _Parsed(Exception):
    """Raised once the top-level parser has accepted the arguments."""


def main(argv: list[str]) -> int:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> object:
        original(self, *args, **kwargs)  # type: ignore[arg-type]  # exits 2 on bad arguments
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop  # type: ignore[method-assign]
    try:
        if argv[0] == "fff":
            from fffcore.cli import main as fff_main

            fff_main(argv[1:])
        elif argv[0] in ("python", "python3") and argv[1] == "-m":
            sys.argv = [argv[2], *argv[3:]]
            sys.path.insert(0, os.getcwd())  # as python -m does: the studies run from the checkout's root
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            print(f"docs_parse_only: cannot parse {argv[0]!r} commands", file=sys.stderr)
            return 1
    except _Parsed:
        return 0
    print(f"docs_parse_only: {' '.join(argv)} finished without parsing arguments", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
