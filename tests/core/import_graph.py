"""The import graph of the ``fffcore`` package, read from the source with :mod:`ast` (nothing is imported).

Every ``import`` of an ``fffcore`` module counts, at module level and inside functions (a lazy import
that closes a cycle is still a cycle in the design), except those under ``if TYPE_CHECKING:``, which
never run. ``from fffcore.x import name`` is an import of ``fffcore.x.name`` when that is a module and
of ``fffcore.x`` otherwise; an edge goes to the imported module only, not to the ``__init__`` of its
parent packages. A *private* name starts with one underscore (dunders are public); it crosses a module
boundary when another module imports it (``from fffcore.x import _name``) or reads it as an attribute
of an imported module (``m._name`` after ``import fffcore.x as m`` or ``from fffcore import x as m``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "fffcore"
#: Folders under the roots that hold scripts, not library modules.
NOT_LIBRARY = ("benchmarks/studies",)


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Import:
    """One imported module, or one private name read from another module, at ``where`` (file:line)."""

    source: str
    target: str
    where: str
    statement: str

    def __str__(self) -> str:
        return f"{self.where}: {self.source} -> {self.target}  ({self.statement})"

    def sort_key(self) -> tuple[str, int]:
        path, line = self.where.rsplit(":", 1)
        return path, int(line)


@dataclass(frozen=True)
class Graph:
    modules: dict[str, Module]
    imports: list[Import]
    private_uses: list[Import]
    #: ``from fffcore import name`` and ``fffcore.name`` (after ``import fffcore``).
    root_names: list[Import]

    def edges(self) -> dict[str, set[str]]:
        edges: dict[str, set[str]] = {name: set() for name in self.modules}
        for imp in self.imports:
            edges[imp.source].add(imp.target)
        return edges


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def package_roots(repo: Path) -> dict[str, str]:
    """Root folder -> the package it becomes, from ``PACKAGE_ROOTS`` in setup.py (read: importing it builds)."""
    for node in ast.parse((repo / "setup.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PACKAGE_ROOTS" for t in node.targets):
            return {folder: package for package, folder in ast.literal_eval(node.value).items()}
    raise LookupError(f"{repo / 'setup.py'} assigns no PACKAGE_ROOTS")


def find_modules(repo: Path, roots: Mapping[str, str], skip: Iterable[str] = NOT_LIBRARY) -> dict[str, Module]:
    """Every library module under the root folders (mapped folder -> package), by dotted name: the .py files
    of folders with an ``__init__.py`` all the way down, less ``conftest.py``, ``test_*.py`` and ``skip``."""
    skipped = [repo / folder for folder in skip]
    modules: dict[str, Module] = {}
    for folder, package in roots.items():
        for path in sorted((repo / folder).rglob("*.py")):
            if path.name == "conftest.py" or path.name.startswith("test_"):
                continue
            if any(path.is_relative_to(s) for s in skipped):
                continue
            folders = (path.parent, *path.parent.parents)
            if not all((d / "__init__.py").is_file() for d in folders if d.is_relative_to(repo / folder)):
                continue
            parts = list(path.relative_to(repo / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join([package, *parts])
            modules[name] = Module(name, path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for anything but names and attributes."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else [*inner, node.attr]
    return None


class _ModuleReader(ast.NodeVisitor):
    """The imports of one module, the names they bind to modules, and the private names it reads."""

    def __init__(self, module: Module, modules: Mapping[str, Module], repo: Path, lines: list[str]):
        self.module = module
        self.modules = modules
        self.where = module.path.relative_to(repo).as_posix()
        self.lines = lines
        self.imports: list[Import] = []
        self.private_uses: list[Import] = []
        self.root_names: list[Import] = []
        self.bound: dict[str, str] = {}  # local name -> the fffcore module it is bound to
        self.attributes: list[tuple[ast.Attribute, list[str]]] = []

    def _record(self, into: list[Import], node: ast.AST, target: str) -> None:
        statement = self.lines[node.lineno - 1].strip()
        found = Import(self.module.name, target, f"{self.where}:{node.lineno}", statement)
        if found not in into:
            into.append(found)

    def _known(self, dotted: str) -> str:
        """The longest prefix of ``dotted`` that is a module of the package."""
        parts = dotted.split(".")
        while len(parts) > 1 and ".".join(parts) not in self.modules:
            parts.pop()
        return ".".join(parts)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] != PACKAGE:
                continue
            self._record(self.imports, node, self._known(alias.name))
            if alias.asname:
                self.bound[alias.asname] = alias.name
            else:
                self.bound[PACKAGE] = PACKAGE

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self.module.name.split(".")
            if not self.module.is_package:
                package.pop()
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        if base.split(".")[0] != PACKAGE:
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.modules:
                self._record(self.imports, node, submodule)
                self.bound[alias.asname or alias.name] = submodule
            else:
                self._record(self.imports, node, self._known(base))
            if base == PACKAGE:  # the root may rebind a submodule's name: fffcore.warmup is a function
                self._record(self.root_names, node, submodule)
            if is_private(alias.name):
                self._record(self.private_uses, node, f"{base}.{alias.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node.value)
        if dotted is not None and (is_private(node.attr) or dotted == [PACKAGE]):
            self.attributes.append((node, dotted))
        self.generic_visit(node)

    def read(self, tree: ast.Module) -> None:
        self.visit(tree)
        # Names are bound by imports anywhere in the module, so attributes are resolved once all are known.
        for node, (head, *rest) in self.attributes:
            if head not in self.bound:
                continue
            owner = ".".join([self.bound[head], *rest])
            if is_private(node.attr) and owner in self.modules:
                self._record(self.private_uses, node, f"{owner}.{node.attr}")
            if owner == PACKAGE:
                self._record(self.root_names, node, f"{PACKAGE}.{node.attr}")


def read_graph(repo: Path, modules: Mapping[str, Module]) -> Graph:
    """The imports between ``modules`` and the private names each reads from another."""
    imports: list[Import] = []
    private_uses: list[Import] = []
    root_names: list[Import] = []
    for module in modules.values():
        source = module.path.read_text(encoding="utf-8")
        reader = _ModuleReader(module, modules, repo, source.splitlines())
        reader.read(ast.parse(source, filename=str(module.path)))
        imports += reader.imports
        private_uses += reader.private_uses
        root_names += reader.root_names
    return Graph(dict(modules), imports, private_uses, root_names)


def reexports(module: Module, modules: Mapping[str, Module]) -> dict[str, str]:
    """The names ``module`` binds at module level with ``from fffcore.x import name``: name -> where it is
    defined (``fffcore.x``, or ``fffcore.x.name`` for a module)."""
    found: dict[str, str] = {}
    for node in ast.parse(module.path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == PACKAGE:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found[alias.asname or alias.name] = submodule if submodule in modules else str(node.module)
    return found


def strongly_connected_components(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The components of ``edges`` (node -> the nodes it points to) that contain a cycle: two nodes or
    more, or one that points to itself. Each sorted, in sorted order (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(components)


def cycles(graph: Graph) -> list[tuple[list[str], list[Import]]]:
    """Each import cycle: its modules and the import lines between them."""
    found = []
    for component in strongly_connected_components(graph.edges()):
        members = set(component)
        lines = [imp for imp in graph.imports if imp.source in members and imp.target in members]
        found.append((component, sorted(lines, key=Import.sort_key)))
    return found


def describe_cycles(found: list[tuple[list[str], list[Import]]]) -> str:
    return "\n".join(
        f"import cycle among {', '.join(component)}:\n" + "\n".join(f"    {imp}" for imp in lines)
        for component, lines in found
    )
