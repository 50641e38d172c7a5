"""``fff backends``: every backend, whether it runs here, and if not why and how to fix it."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("backends", help="list backends, their status and capabilities")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.set_defaults(func=run)


def run(arguments: argparse.Namespace) -> int:
    """List the backends; exit status 1 when ``FFFCORE_BACKEND`` names one that cannot run here."""
    from fffcore import list_backends
    from fffcore.plan import environment_problem

    rows = list_backends()
    problem = environment_problem()
    if arguments.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
        return _warn(problem)
    width = max([len(row.name) for row in rows] + [7])
    for row in rows:
        status = "broken" if row.broken else ("available" if row.available else "unavailable")
        print(f"{row.name:<{width}}  {status}")
        if row.description:
            print(f"{'':<{width}}  {row.description}")
        if not row.broken:
            devices = ", ".join(row.devices)
            trains = "; backward: yes" if row.backward else "; backward: no"
            print(
                f"{'':<{width}}  arrays: {', '.join(row.array_types)} on {devices}; dtypes: {', '.join(row.dtypes)}"
                + trains
            )
            source = f"from {row.package or 'a plugin registered in this process'}"
            library = f"; library version {row.version}" if row.version else ""
            print(f"{'':<{width}}  {source} (plugin {row.plugin}){library}; priority {row.priority}")
        if not row.available:
            print(f"{'':<{width}}  why: {row.reason}")
            if row.fix:
                print(f"{'':<{width}}  fix: {row.fix}")
    from fffcore.plan import automatic_choices

    print()
    print("automatic choice (no backend named):")
    choices = automatic_choices()
    label_width = max(len(label) for label, _ in choices)
    for label, chosen in choices:
        print(f"  {label:<{label_width}}  {chosen}")
    return _warn(problem)


def _warn(problem: str | None) -> int:
    if problem is None:
        return 0
    warning = f"fff backends: warning: {problem}\n  every call that names no backend fails until it is unset"
    print(warning, file=sys.stderr)
    return 1
