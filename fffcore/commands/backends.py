"""``fff backends``: every backend, whether it runs here, and if not why and how to fix it."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("backends", help="list backends, their status and capabilities")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.set_defaults(func=run)


def run(arguments: argparse.Namespace) -> int:
    from fffcore import list_backends

    rows = list_backends()
    if arguments.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
        return 0
    width = max([len(row.name) for row in rows] + [7])
    for row in rows:
        status = "broken" if row.broken else ("available" if row.available else "unavailable")
        print(f"{row.name:<{width}}  {status}")
        if row.description:
            print(f"{'':<{width}}  {row.description}")
        if not row.broken:
            devices = ", ".join(row.devices)
            print(f"{'':<{width}}  arrays: {', '.join(row.array_types)} on {devices}; dtypes: {', '.join(row.dtypes)}")
        if not row.available:
            print(f"{'':<{width}}  why: {row.reason}")
            if row.fix:
                print(f"{'':<{width}}  fix: {row.fix}")
    from fffcore.selection import automatic_choices

    print()
    print("automatic choice (no backend named):")
    choices = automatic_choices()
    label_width = max(len(label) for label, _ in choices)
    for label, chosen in choices:
        print(f"  {label:<{label_width}}  {chosen}")
    return 0
