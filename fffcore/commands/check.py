"""``fff check BACKEND``: run the conformance suite on one backend and print a per-property summary.

Exit status: 0 when every property passes (skipped ones do not count), 1 when
any fails, 2 when the suite cannot run (hypothesis missing, unknown or
unavailable backend, a device or dtype the backend does not declare).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

INSTALL_HINT = "pip install 'fffcore[conformance]'  (or: pip install hypothesis)"

#: Examples per property: a default run, and a thorough one (``--thorough``) unless --max-examples says.
DEFAULT_EXAMPLES = 100
THOROUGH_EXAMPLES = 500


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="run the conformance suite on a backend",
        description="Check a registered backend (built-in or third-party) against the FFF/CMM spec, property "
        "by property, with Hypothesis; a failure shows a minimal example and how to reproduce it.",
    )
    parser.add_argument("backend", help="the backend's name, as `fff backends` lists it")
    parser.add_argument(
        "--max-examples",
        type=int,
        default=None,
        metavar="N",
        help=f"examples per property (default {DEFAULT_EXAMPLES}; {THOROUGH_EXAMPLES} with --thorough)",
    )
    parser.add_argument(
        "--thorough",
        action="store_true",
        help="the release check: more examples, wider and deeper layers, batches up to 32769 rows, and "
        "every activation with every dtype and array type (several times longer than a default run)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="Hypothesis seed (default: a random one, printed for reproduction)"
    )
    parser.add_argument(
        "--dtype",
        action="append",
        default=None,
        metavar="DTYPE",
        help="test only this parameter dtype (repeatable; default: every dtype the backend declares)",
    )
    parser.add_argument(
        "--device", default=None, help="device for native arrays, for backends that declare several (e.g. cuda)"
    )
    parser.add_argument(
        "--property",
        action="append",
        default=None,
        dest="properties",
        metavar="NAME",
        help="run only this property (repeatable)",
    )
    parser.set_defaults(func=run)


def run(arguments: argparse.Namespace) -> int:
    try:
        import hypothesis  # noqa: F401  (the suite draws its cases with it)
    except ImportError:
        print(
            f"fff check needs Hypothesis, which is not installed. Install it with:\n    {INSTALL_HINT}", file=sys.stderr
        )
        return 2
    max_examples = arguments.max_examples
    if max_examples is None:
        max_examples = THOROUGH_EXAMPLES if arguments.thorough else DEFAULT_EXAMPLES
    if max_examples < 1:
        print(f"fff check: --max-examples must be >= 1, got {max_examples}", file=sys.stderr)
        return 2

    from fffcore import __version__
    from fffcore.conformance.properties import get_property
    from fffcore.conformance.runner import PropertyResult, run_property
    from fffcore.conformance.target import resolve_target
    from fffcore.registry import BackendUnavailableError, UnknownBackendError

    seed = arguments.seed if arguments.seed is not None else random.randrange(2**31)
    try:
        target = resolve_target(arguments.backend, device=arguments.device, dtypes=arguments.dtype)
        chosen = [get_property(name) for name in arguments.properties or []] or None
    except (UnknownBackendError, BackendUnavailableError, ValueError) as error:
        print(f"fff check: {error}", file=sys.stderr)
        return 2

    from fffcore.conformance.properties import PROPERTIES

    chosen = chosen or list(PROPERTIES)
    version = f" {target.version}" if target.version else ""
    print(f"fff check {target.backend}{version} (fffcore {__version__}), device {target.device}")
    print(
        f"  dtypes: {', '.join(target.dtypes)}; arrays: {target.describe_array_types()}; "
        f"activations: {', '.join(target.activations)}"
    )
    for note in target.notes:
        print(f"  not tested: {note}")
    mode = ", thorough" if arguments.thorough else ""
    print(f"  seed {seed}, up to {max_examples} examples per property{mode}")
    width = max(len(prop.name) for prop in chosen)
    start = time.perf_counter()
    results: list[PropertyResult] = []
    for prop in chosen:
        result = run_property(prop, target, max_examples=max_examples, seed=seed, thorough=arguments.thorough)
        results.append(result)
        label = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}[result.status]
        why = f"  ({result.message})" if result.status == "skip" and result.message else ""
        print(
            f"{label}  {result.name:<{width}}  {result.examples:>4} examples  {result.seconds:6.1f} s{why}", flush=True
        )
    failures = [r for r in results if r.status == "fail"]
    for result in failures:
        print()
        print(result.message)
    passed = sum(r.status == "pass" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    print()
    print(
        f"{passed} passed, {len(failures)} failed"
        + (f", {skipped} skipped" if skipped else "")
        + f" in {time.perf_counter() - start:.1f} s (seed {seed})"
    )
    return 1 if failures else 0
