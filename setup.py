"""The one piece of packaging pyproject.toml cannot say: root folders of the checkout mapped into ``fffcore``.

Everything else (metadata, dependencies, package data) is in pyproject.toml. Each folder of
:data:`PACKAGE_ROOTS` becomes a package of fffcore, and every package below it (a folder with an
``__init__.py``) is found at build time, so a new subpackage needs no edit here. setuptools' own
discovery cannot do this: ``[tool.setuptools.packages.find]`` names packages after their folders
(``backends.numba``, not ``fffcore.backends.numba``), and the discovery it runs from ``package-dir``
alone takes every folder below a root as a namespace package, with no way to leave one out.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

#: Package name -> the folder of the checkout it is built from.
PACKAGE_ROOTS = {
    "fffcore": "fffcore",
    "fffcore.backends": "backends",
    "fffcore.reference": "reference",
    "fffcore.conformance": "conformance",
    "fffcore.benchmarks": "benchmarks",
}
#: Packages under a root that live in the repository only: the benchmark studies, run from a checkout
#: with ``python -m benchmarks.studies.NAME`` (the pytest-benchmark suite in benchmarks/test_suite/ and
#: the results are not packages at all).
REPOSITORY_ONLY = {"fffcore.benchmarks": ("studies", "studies.*")}


def discovered_packages() -> list[str]:
    """Every root package and each package below it, named inside fffcore (``fffcore.backends.numba``)."""
    return [
        name
        for root, folder in PACKAGE_ROOTS.items()
        for name in (
            root,
            *(f"{root}.{found}" for found in find_packages(HERE / folder, exclude=REPOSITORY_ONLY.get(root, ()))),
        )
    ]


setup(package_dir=PACKAGE_ROOTS, packages=discovered_packages())
