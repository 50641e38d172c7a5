"""The conformance suite as pytest tests, one per property.

Collected by ``pytest --pyargs fffcore.conformance --fff-backend NAME``; the
fixture ``fff_conformance`` comes from :mod:`fffcore.conformance.pytest_plugin`.
"""

from __future__ import annotations

import pytest

from fffcore.conformance.properties import PROPERTY_NAMES


@pytest.mark.parametrize("property_name", PROPERTY_NAMES)
def test_property(property_name: str, fff_conformance) -> None:
    result = fff_conformance.run(property_name)
    if result.status == "skip":
        pytest.skip(result.message)
    if not result.passed:
        pytest.fail(result.message, pytrace=False)
