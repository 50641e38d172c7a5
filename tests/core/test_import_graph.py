"""The package's imports: no cycle, no private name used outside its module, no re-export imported
from the package root. Read from the source (:mod:`tests.core.import_graph`), so no optional library is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.import_graph import (
    PACKAGE,
    Graph,
    Module,
    cycles,
    describe_cycles,
    find_modules,
    package_roots,
    read_graph,
    reexports,
    strongly_connected_components,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return find_modules(REPO, package_roots(REPO))


@pytest.fixture(scope="module")
def graph(modules: dict[str, Module]) -> Graph:
    return read_graph(REPO, modules)


def test_every_root_folder_is_read_as_part_of_the_package(modules: dict[str, Module]) -> None:
    expected = (
        "fffcore",
        "fffcore.api",
        "fffcore.commands.check",
        "fffcore.backends.numba.plugin",
        "fffcore.reference.fff",
        "fffcore.conformance.properties",
        "fffcore.benchmarks.cases",
    )
    assert [name for name in expected if name not in modules] == []
    assert modules["fffcore.backends"].path == REPO / "backends" / "__init__.py"
    assert not [name for name in modules if name.rsplit(".", 1)[-1].startswith("test_")]
    assert not [name for name in modules if name.endswith("conftest") or ".studies" in name]


def test_the_package_has_no_import_cycle(graph: Graph) -> None:
    found = cycles(graph)
    if found:
        pytest.fail(describe_cycles(found), pytrace=False)


def test_no_private_name_is_used_outside_its_module(graph: Graph) -> None:
    if graph.private_uses:
        listed = "\n".join(f"    {use}" for use in graph.private_uses)
        pytest.fail(f"private names used outside their module:\n{listed}", pytrace=False)


def test_re_exported_names_are_imported_from_the_module_that_defines_them(
    graph: Graph, modules: dict[str, Module]
) -> None:
    # The root imports nearly every module, so a module that imports it to reach one name is a cycle
    # waiting for the root to import that module; names the root defines itself may come from it.
    defined_in = reexports(modules[PACKAGE], modules)
    wrong = [
        f"    {use}: import {name} from {defined_in[name]}"
        for use in graph.root_names
        if (name := use.target.removeprefix(f"{PACKAGE}.")) in defined_in and use.source != PACKAGE
    ]
    if wrong:
        listed = "\n".join(wrong)
        pytest.fail(f"names imported from the {PACKAGE} package root:\n{listed}", pytrace=False)


# The checks' own tests: tiny packages written to tmp_path.


def write(root: Path, files: dict[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def read(root: Path, files: dict[str, str]) -> Graph:
    write(root, files)
    return read_graph(root, find_modules(root, {"fffcore": "fffcore", "backends": "fffcore.backends"}, ()))


def test_a_cycle_through_a_lazy_import_is_reported_with_its_import_lines(tmp_path: Path) -> None:
    graph = read(
        tmp_path,
        {
            "fffcore/__init__.py": "",
            "fffcore/a.py": "import os\nfrom fffcore.b import g\n",
            "fffcore/b.py": "def g():\n    from . import a\n",
            "fffcore/c.py": "import fffcore.a\n",
        },
    )
    found = cycles(graph)
    assert [component for component, _ in found] == [["fffcore.a", "fffcore.b"]]
    message = describe_cycles(found)
    assert "fffcore/a.py:2: fffcore.a -> fffcore.b  (from fffcore.b import g)" in message
    assert "fffcore/b.py:2: fffcore.b -> fffcore.a  (from . import a)" in message
    assert "c.py" not in message


def test_type_checking_imports_and_other_packages_are_not_edges(tmp_path: Path) -> None:
    graph = read(
        tmp_path,
        {
            "fffcore/__init__.py": "from fffcore.a import f\n",
            "fffcore/a.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fffcore\nelse:\n    import fffcore.c\n"
            ),
            "fffcore/c.py": "",
            "backends/__init__.py": "",
            "backends/x.py": "import typing\nif typing.TYPE_CHECKING:\n    from fffcore import a\nfrom .. import a\n",
        },
    )
    assert cycles(graph) == []
    edges = graph.edges()
    assert edges["fffcore"] == {"fffcore.a"}
    assert edges["fffcore.a"] == {"fffcore.c"}  # the else branch runs
    assert edges["fffcore.backends.x"] == {"fffcore.a"}  # relative, through the root folder's mapping
    assert edges["fffcore.backends"] == set()  # no implicit edge to a parent's __init__


def test_from_import_names_the_submodule_or_else_the_module(tmp_path: Path) -> None:
    graph = read(
        tmp_path,
        {
            "fffcore/__init__.py": "from fffcore.api import fff\n",
            "fffcore/api.py": "def fff(): ...\n",
            "fffcore/cli.py": "from fffcore import api, fff\n",
        },
    )
    assert graph.edges()["fffcore.cli"] == {"fffcore.api", "fffcore"}
    assert [use.target for use in graph.root_names] == ["fffcore.api", "fffcore.fff"]
    assert reexports(find_modules(tmp_path, {"fffcore": "fffcore"}, ())["fffcore"], {}) == {"fff": "fffcore.api"}


def test_private_names_read_from_another_module_are_found(tmp_path: Path) -> None:
    graph = read(
        tmp_path,
        {
            "fffcore/__init__.py": "",
            "fffcore/a.py": "_x = _y = _z = 1\n",
            "fffcore/b.py": (
                "import fffcore.a as m\n"
                "from fffcore import a\n"
                "from fffcore.a import _x\n"
                "def f(self):\n"
                "    import fffcore.a\n"
                "    return m._y, a._z, fffcore.a._z, a.__name__, self._w, _x\n"
            ),
        },
    )
    assert sorted((use.target, use.where) for use in graph.private_uses) == [
        ("fffcore.a._x", "fffcore/b.py:3"),
        ("fffcore.a._y", "fffcore/b.py:6"),
        ("fffcore.a._z", "fffcore/b.py:6"),
    ]


def test_modules_are_the_files_of_package_folders_less_tests_and_studies(tmp_path: Path) -> None:
    files = ["__init__.py", "a.py", "conftest.py", "test_a.py", "scripts/run.py", "sub/__init__.py", "sub/b.py"]
    write(tmp_path, {f"benchmarks/{name}": "" for name in [*files, "studies/__init__.py", "studies/c.py"]})
    modules = find_modules(tmp_path, {"benchmarks": "fffcore.benchmarks"}, ["benchmarks/studies"])
    assert sorted(modules) == [f"fffcore.benchmarks{name}" for name in ("", ".a", ".sub", ".sub.b")]


def test_strongly_connected_components_are_the_cycles() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["d"], "e": ["a"], "f": []}
    assert strongly_connected_components(edges) == [["a", "b", "c"], ["d"]]
    assert strongly_connected_components({"a": ["b"], "b": []}) == []
