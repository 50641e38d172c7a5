"""fffcore: fast feedforward (FFF) inference with interchangeable backends.

    >>> import numpy as np, fffcore
    >>> params = fffcore.FFFParams.random(d_in=8, d_out=4, depth=2, seed=0)
    >>> fffcore.fff(np.ones((3, 8), np.float32), params).shape
    (3, 4)

See :mod:`fffcore.spec` for the exact semantics, :mod:`fffcore.plan`
for how a backend is chosen, and :mod:`fffcore.hookspecs` for writing one.
"""

from fffcore import forking as _forking  # noqa: F401  (registers the at-fork handler on import)
from fffcore.api import CMMResult, cmm, fff
from fffcore.backend import Availability, Backend
from fffcore.backward import FFFGradients, fff_backward
from fffcore.hookspecs import ENTRY_POINT_GROUP, hookimpl
from fffcore.params import FFFParams
from fffcore.plan import resolve_backend, use_backend
from fffcore.registry import BackendInfo, BackendUnavailableError, UnknownBackendError
from fffcore.registry import registry as _registry
from fffcore.spec import ACTIVATIONS
from fffcore.warmup import warmup

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "ENTRY_POINT_GROUP",
    "Availability",
    "Backend",
    "BackendInfo",
    "BackendUnavailableError",
    "CMMResult",
    "FFFGradients",
    "FFFParams",
    "UnknownBackendError",
    "__version__",
    "cmm",
    "fff",
    "fff_backward",
    "get_backend",
    "hookimpl",
    "list_backends",
    "resolve_backend",
    "use_backend",
    "warmup",
]


def list_backends() -> list[BackendInfo]:
    """Every registered backend (available or not, with the reason and the fix) and every broken plugin."""
    return _registry().infos()


def get_backend(name: str) -> Backend:
    """The named backend; raises :class:`UnknownBackendError` or :class:`BackendUnavailableError`."""
    return _registry().get(name)
