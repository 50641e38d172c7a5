"""The backend registry: loads plugins, lists backends, caches availability.

Built-in backends are plugins registered from :data:`BUILTIN_PLUGINS`, the
same path third-party entry points take, so the plugin machinery is exercised
by every run. Each plugin is loaded, registered and asked for its backends
inside its own ``try``: one that raises is recorded as broken with a one-line
reason, and the rest keep working.

Environment:
    FFFCORE_LOAD_PLUGINS: unset loads every entry point of the group
        ``fffcore.backends``; a comma-separated list loads only those entry
        point names; an empty string loads none (built-ins are always loaded).
"""

from __future__ import annotations

import importlib
import itertools
import os
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from fffcore import hookspecs
from fffcore.backend import Availability, Backend
from fffcore.spec import REQUIRED_DTYPES

#: Modules of the built-in backend plugins, registered before any entry point.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "fffcore.reference.plugin",
    "fffcore.backends.numba.plugin",
    "fffcore.backends.torch.plugin",
    "fffcore.backends.cupy.plugin",
)

LOAD_PLUGINS_VARIABLE = "FFFCORE_LOAD_PLUGINS"


_generations = itertools.count(1)


class UnknownBackendError(ValueError):
    """A backend name that no plugin registered."""


class BackendUnavailableError(RuntimeError):
    """A registered backend that cannot run here (missing library, no device)."""


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that raised while loading, registering or listing its backends."""

    name: str
    reason: str


@dataclass(frozen=True)
class BackendInfo:
    """One row of :func:`fffcore.list_backends`."""

    name: str
    available: bool
    reason: str
    fix: str
    array_types: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    activations: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""
    broken: bool = False
    #: The automatic choice's order: higher first among backends that can take a call.
    priority: int = 0
    #: The distribution that installed the plugin, with its version ("" for one registered in-process).
    package: str = ""
    #: ``Backend.version()``: the version of the library the backend runs on.
    version: str = ""
    #: ``Backend.backward``: it computes ``fffcore.fff_backward`` (training).
    backward: bool = False


@dataclass
class Registry:
    """Backends by name, the plugins they came from, and the plugins that broke."""

    backends: dict[str, Backend] = field(default_factory=dict)
    plugin_of: dict[str, str] = field(default_factory=dict)
    #: Plugin name -> the distribution (and version) that installed it.
    package_of_plugin: dict[str, str] = field(default_factory=dict)
    broken: list[BrokenPlugin] = field(default_factory=list)
    #: A number no other registry of this process has: caches of decisions made from this
    #: registry are keyed on it.
    generation: int = field(default_factory=lambda: next(_generations))
    _availability: dict[str, Availability] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def availability(self, name: str) -> Availability:
        """The backend's availability, asked once and cached; a raising check counts as unavailable."""
        cached = self._availability.get(name)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._availability.get(name)
            if cached is None:
                backend = self.backends[name]
                try:
                    cached = backend.availability()
                    if not isinstance(cached, Availability):
                        raise TypeError(f"availability() returned {type(cached).__name__}, not Availability")
                except KeyboardInterrupt:
                    raise
                except BaseException as error:  # a broken check (even one calling sys.exit) must not break listing
                    cached = Availability(False, f"availability check raised {one_line(error)}", backend.install)
                self._availability[name] = cached
        return cached

    def get(self, name: str) -> Backend:
        """The named backend, ready to run; raises when unknown or unavailable."""
        backend = self.backends.get(name)
        if backend is None:
            known = ", ".join(sorted(self.backends)) or "none"
            broken = "".join(f"; plugin {b.name!r} failed to load: {b.reason}" for b in self.broken)
            raise UnknownBackendError(f"unknown backend {name!r}; known backends: {known}{broken}")
        status = self.availability(name)
        if not status.available:
            fix = f"; to fix: {status.fix}" if status.fix else ""
            raise BackendUnavailableError(f"backend {name!r} is unavailable: {status.reason}{fix}")
        return backend

    def infos(self) -> list[BackendInfo]:
        rows = []
        for name, backend in self.backends.items():
            status = self.availability(name)
            rows.append(
                BackendInfo(
                    name=name,
                    available=status.available,
                    reason=status.reason,
                    fix=status.fix,
                    array_types=tuple(backend.array_types),
                    devices=tuple(backend.devices),
                    dtypes=tuple(backend.dtypes),
                    activations=tuple(backend.activations),
                    description=backend.description,
                    plugin=self.plugin_of[name],
                    priority=backend.priority,
                    backward=bool(getattr(backend, "backward", False)),
                    package=self.package_of_plugin.get(self.plugin_of[name], ""),
                    version=_version_of(backend),
                )
            )
        for plugin in self.broken:
            rows.append(
                BackendInfo(
                    name=plugin.name,
                    available=False,
                    reason=f"plugin failed to load: {plugin.reason}",
                    fix=f"fix or uninstall the plugin, or leave it out of {LOAD_PLUGINS_VARIABLE}",
                    plugin=plugin.name,
                    broken=True,
                )
            )
        return rows


#: The process-wide registry once loaded (None until first use). Every cache of decisions made
#: from it (:mod:`fffcore.plan`) is keyed on its ``generation``, so replacing it (:func:`reset_registry`,
#: or a test installing its own with ``monkeypatch.setattr(registry_module, "loaded", ...)``) is all
#: it takes for those decisions to be made anew.
loaded: Registry | None = None
_registry_lock = threading.Lock()


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global loaded
    current = loaded
    if current is None:
        with _registry_lock:
            if loaded is None:
                loaded = load_registry()
            current = loaded
    return current


def reset_registry() -> None:
    """Forget the loaded registry, so the next use loads plugins again (for tests)."""
    global loaded
    with _registry_lock:
        loaded = None


def load_registry(extra_plugins: list[tuple[str, Any]] | None = None) -> Registry:
    """Load the built-in plugins, then the entry points, then ``extra_plugins`` (name, plugin)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    result = Registry()
    plugins: list[tuple[str, Any]] = []

    for module_name in BUILTIN_PLUGINS:
        _guarded(result, module_name, lambda m=module_name: plugins.append((m, importlib.import_module(m))))
        result.package_of_plugin[module_name] = _distribution("fffcore")
    for entry_point in _selected_entry_points():
        _guarded(result, entry_point.name, lambda ep=entry_point: plugins.append((ep.name, ep.load())))
        dist = getattr(entry_point, "dist", None)
        if dist is not None:
            result.package_of_plugin[entry_point.name] = f"{dist.name} {dist.version}"
    plugins.extend(extra_plugins or [])

    for plugin_name, plugin in plugins:
        _guarded(result, plugin_name, lambda n=plugin_name, p=plugin: _register_plugin(manager, result, n, p))
    return result


def _distribution(name: str) -> str:
    """``"name version"`` of an installed distribution, or the name alone when its metadata is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return name


def _version_of(backend: Backend) -> str:
    """``backend.version()``, or "" when it raises (a listing must not fail on one backend)."""
    try:
        return str(backend.version())
    except Exception:
        return ""


def _selected_entry_points() -> list[Any]:
    selected = os.environ.get(LOAD_PLUGINS_VARIABLE)
    found = list(entry_points(group=hookspecs.ENTRY_POINT_GROUP))
    if selected is None:
        return found
    wanted = {name.strip() for name in selected.split(",") if name.strip()}
    return [ep for ep in found if ep.name in wanted]


def _register_plugin(manager: pluggy.PluginManager, result: Registry, plugin_name: str, plugin: Any) -> None:
    manager.register(plugin, name=plugin_name)
    try:
        manager.check_pending()  # a misspelled hook name fails here, loudly
        implementations = [
            impl for impl in manager.hook.register_backends.get_hookimpls() if impl.plugin_name == plugin_name
        ]
        found: list[Backend] = []

        def register(backend: object) -> None:
            _check_backend(backend, plugin_name)
            found.append(backend)  # type: ignore[arg-type]

        for impl in implementations:
            impl.function(register=register)
        for backend in found:
            if backend.name in result.backends or any(b.name == backend.name for b in found if b is not backend):
                raise ValueError(f"backend name {backend.name!r} is already registered")
    except BaseException:
        manager.unregister(name=plugin_name)
        raise
    for backend in found:
        result.backends[backend.name] = backend
        result.plugin_of[backend.name] = plugin_name


def _check_backend(backend: object, plugin_name: str) -> None:
    if not isinstance(backend, Backend):
        raise TypeError(f"register() expects a fffcore.Backend instance, got {type(backend).__name__}")
    name = getattr(backend, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{type(backend).__name__}.name must be a non-empty string, got {name!r}")
    missing = [d for d in REQUIRED_DTYPES if d not in backend.dtypes]
    if missing:
        raise ValueError(f"backend {name!r} must declare the required dtypes {REQUIRED_DTYPES}, misses {missing}")


def _guarded(result: Registry, plugin_name: str, action: Any) -> None:
    try:
        action()
    except KeyboardInterrupt:  # the user stopping the program is not a broken plugin
        raise
    except BaseException as error:  # one broken plugin, even one calling sys.exit, must never break the others
        result.broken.append(BrokenPlugin(plugin_name, one_line(error)))


def one_line(error: BaseException) -> str:
    """``"TypeName: first line of the message"``: how load errors and failed checks are reported."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
