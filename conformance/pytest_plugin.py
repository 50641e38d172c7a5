"""pytest plugin of the conformance suite (registered through the ``pytest11`` entry point).

Run the suite on any registered backend from pytest, e.g. in a third-party
backend's own CI::

    pytest --pyargs fffcore.conformance --fff-backend my_backend --fff-max-examples 200

Options: ``--fff-backend NAME`` (required for the suite to run; without it
its tests skip), ``--fff-max-examples N`` (default 100), ``--fff-seed S``
(default 0, so CI runs are repeatable), ``--fff-dtype D`` (repeatable),
``--fff-device DEV`` and ``--fff-thorough`` (the release check of
``fff check --thorough``). The report header names the backend, its version
and the device.

This module is imported by every pytest run in an environment where fffcore
is installed, so it imports nothing beyond pytest at load time, and works
when Hypothesis is missing (the suite's tests then skip and say why).
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("fffcore", "fffcore conformance suite")
    group.addoption("--fff-backend", default=None, metavar="NAME", help="backend the conformance suite checks")
    group.addoption(
        "--fff-max-examples", type=int, default=100, metavar="N", help="examples per conformance property (100)"
    )
    group.addoption("--fff-seed", type=int, default=0, metavar="S", help="Hypothesis seed of the conformance suite (0)")
    group.addoption(
        "--fff-dtype", action="append", default=None, metavar="DTYPE", help="only this parameter dtype (repeatable)"
    )
    group.addoption("--fff-device", default=None, metavar="DEV", help="device for native arrays, e.g. cuda")
    group.addoption(
        "--fff-thorough",
        action="store_true",
        default=False,
        help="the release check of `fff check --thorough` (wider shapes, larger batches, every activation)",
    )


def pytest_report_header(config: Any) -> str | None:
    backend = config.getoption("--fff-backend")
    if backend is None:
        return None
    try:
        from fffcore.conformance.target import resolve_target

        target = resolve_target(
            backend, device=config.getoption("--fff-device"), dtypes=_dtypes(config.getoption("--fff-dtype"))
        )
    except Exception as error:  # the header must not break the run; the tests report the error
        return f"fffcore conformance: backend {backend} cannot be tested: {error}"
    version = f" {target.version}" if target.version else ""
    return (
        f"fffcore conformance: backend {target.backend}{version} on {target.device}; "
        f"dtypes {', '.join(target.dtypes)}; arrays {target.describe_array_types()}; "
        f"seed {config.getoption('--fff-seed')}, {config.getoption('--fff-max-examples')} examples per property"
        + (", thorough" if config.getoption("--fff-thorough") else "")
    )


class ConformanceSession:
    """What the suite's tests need: the target and the Hypothesis settings from the command line."""

    def __init__(self, target: Any, max_examples: int, seed: int, thorough: bool = False) -> None:
        self.target = target
        self.max_examples = max_examples
        self.seed = seed
        self.thorough = thorough

    def run(self, property_name: str) -> Any:
        """Run one property; returns a :class:`fffcore.conformance.runner.PropertyResult`."""
        from fffcore.conformance.properties import get_property
        from fffcore.conformance.runner import run_property

        return run_property(
            get_property(property_name),
            self.target,
            max_examples=self.max_examples,
            seed=self.seed,
            thorough=self.thorough,
        )


@pytest.fixture(scope="session")
def fff_conformance(request: Any) -> ConformanceSession:
    """The backend under test (``--fff-backend``); skips when none is given or Hypothesis is missing."""
    config = request.config
    backend = config.getoption("--fff-backend")
    if backend is None:
        pytest.skip("no backend to check: pass --fff-backend NAME")
    pytest.importorskip(
        "hypothesis", reason="the conformance suite needs Hypothesis: pip install 'fffcore[conformance]'"
    )
    from fffcore.conformance.target import resolve_target

    target = resolve_target(
        backend, device=config.getoption("--fff-device"), dtypes=_dtypes(config.getoption("--fff-dtype"))
    )
    return ConformanceSession(
        target,
        config.getoption("--fff-max-examples"),
        config.getoption("--fff-seed"),
        config.getoption("--fff-thorough"),
    )


def _dtypes(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values else None
