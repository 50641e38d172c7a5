"""The pluggy hook specifications a backend plugin implements.

A plugin is any module or object with functions marked ``@fffcore.hookimpl``.
Built-in backends are plugins too and are registered through the same path
(see :mod:`fffcore.registry`); third-party packages declare an entry point in
the group ``fffcore.backends``::

    [project.entry-points."fffcore.backends"]
    my_backend = "my_package.fff_plugin"

Hooks receive their arguments by name, so later versions of fffcore can add
optional arguments without breaking existing plugins.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

#: The pluggy project name; also the prefix of the marker attributes.
PROJECT_NAME = "fffcore"
#: The entry-point group third-party backends register under.
ENTRY_POINT_GROUP = "fffcore.backends"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_backends(register: Callable[[object], None]) -> None:
    """Register the backends this plugin provides.

    Called once, the first time fffcore needs its backend list (the first
    ``fff``/``cmm`` call, ``list_backends()``, ``fff backends``), never at
    ``import fffcore``.

    Args:
        register: call ``register(backend)`` once per backend, where ``backend``
            is an instance of :class:`fffcore.Backend` (a subclass). A plugin
            may register several backends, or none.

    Must not import heavy optional libraries (torch, cupy, numba) or touch a
    device: availability is asked for later, through
    :meth:`fffcore.Backend.availability`, and only when needed. Registering a
    name that is already taken marks the plugin as broken; exceptions raised
    here mark it as broken too, with the exception as the one-line reason, and
    every other backend keeps working.
    """
