"""The built-in fast backends, each a pluggy plugin listed in :data:`fffcore.registry.BUILTIN_PLUGINS`.

Each imports its library (numba, torch, cupy) only inside its own functions,
so listing backends never needs them installed.
"""
