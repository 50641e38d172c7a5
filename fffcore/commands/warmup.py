"""``fff warmup``: compile (or load from the disk cache) every backend's kernels now, not at the first call."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "warmup",
        help="compile every backend's kernels ahead of time",
        description="Compile or load every backend's kernels now, so that no later call stalls on compilation "
        "(numba: several seconds per dtype the first time, then cached on disk). Run it once after installing, "
        "for example as a step of a container image build.",
    )
    parser.add_argument(
        "--dtype", action="append", default=None, metavar="DTYPE", help="only this dtype (repeatable; default: all)"
    )
    parser.add_argument(
        "--backend", action="append", default=None, metavar="NAME", help="only this backend (repeatable)"
    )
    parser.set_defaults(func=run)


def run(arguments: argparse.Namespace) -> int:
    from fffcore.registry import BackendUnavailableError, UnknownBackendError
    from fffcore.warmup import warmup

    try:
        seconds = warmup(dtypes=arguments.dtype, backends=arguments.backend)
    except (UnknownBackendError, BackendUnavailableError, ValueError) as error:
        print(f"fff warmup: {error}", file=sys.stderr)
        return 2
    for name, taken in seconds.items():
        print(f"{name:<12} {taken:6.1f} s")
    if "numba" in seconds:
        from fffcore.backends.numba.calls import cache_location

        print(f"numba's kernels are cached in {cache_location()}")
    return 0
