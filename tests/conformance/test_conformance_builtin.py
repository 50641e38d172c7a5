"""CI: the conformance suite on every available built-in backend, one test per (backend, device, property).

Built-in backends are found from the registry (the backends registered by the
modules of :data:`fffcore.registry.BUILTIN_PLUGINS`), so a new built-in backend
is checked as soon as it is registered. Unavailable ones skip with the
registry's reason. The seed is fixed, so every CI run draws the same cases.

Examples: :data:`CI_EXAMPLES` per property (threads and invalid inputs run a
quarter, input immutability and repeatability half; see
:func:`fffcore.conformance.runner.examples_for`).
"""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="the conformance suite needs Hypothesis: pip install 'fffcore[conformance]'")

from fffcore.conformance.properties import PROPERTY_NAMES, get_property
from fffcore.conformance.runner import run_property
from fffcore.conformance.target import resolve_target
from fffcore.registry import BUILTIN_PLUGINS, registry

CI_EXAMPLES = 40
CI_SEED = 20231129


def builtin_targets() -> list[tuple[str, str]]:
    """(backend, device) for every built-in backend and each device it declares."""
    current = registry()
    return [
        (name, device)
        for name, backend in current.backends.items()
        if current.plugin_of[name] in BUILTIN_PLUGINS
        for device in backend.devices
    ]


@pytest.fixture(scope="module")
def targets():
    """Resolved targets, cached per (backend, device); a skip reason instead where one cannot run here."""
    cache: dict[tuple[str, str], object] = {}

    def get(backend: str, device: str):
        key = (backend, device)
        if key not in cache:
            status = registry().availability(backend)
            if not status.available:
                cache[key] = f"backend {backend!r} is unavailable here: {status.reason}"
            else:
                try:
                    cache[key] = resolve_target(backend, device=device)
                except ValueError as error:  # e.g. torch on cuda without a GPU
                    cache[key] = str(error)
        return cache[key]

    return get


@pytest.mark.parametrize("property_name", PROPERTY_NAMES)
@pytest.mark.parametrize(("backend", "device"), builtin_targets(), ids=lambda v: v)
def test_builtin_backend_conforms(backend, device, property_name, targets):
    target = targets(backend, device)
    if isinstance(target, str):
        pytest.skip(target)
    result = run_property(get_property(property_name), target, max_examples=CI_EXAMPLES, seed=CI_SEED)
    assert result.status == "pass", result.message
