"""``fffcore.warmup``: compile or load every backend's kernels ahead of the first real call."""

from __future__ import annotations

import time
from collections.abc import Sequence

from fffcore.registry import registry


def warmup(dtypes: Sequence[str] | None = None, backends: Sequence[str] | None = None) -> dict[str, float]:
    """Prepare the kernels of ``backends`` (default: every available one) for ``dtypes`` (default:
    each backend's declared dtypes), so that no later call stalls on compilation.

    numba compiles its kernels on first use (several seconds per dtype on an empty disk cache) and
    loads them from its disk cache in later processes; this does either now. Backends without
    compiled kernels have nothing to do.

    Returns:
        seconds each backend took, by name.

    Raises:
        fffcore.UnknownBackendError, fffcore.BackendUnavailableError: a named backend cannot run here.
        ValueError: a named dtype that no chosen backend declares.
    """
    current = registry()
    if backends is None:
        chosen = [backend for name, backend in current.backends.items() if current.availability(name).available]
    else:
        chosen = [current.get(name) for name in backends]
    if dtypes is not None:
        declared = {dtype for backend in chosen for dtype in backend.dtypes}
        unknown = [dtype for dtype in dtypes if dtype not in declared]
        if unknown:
            raise ValueError(f"dtypes: expected dtypes the backends declare ({sorted(declared)}), got {unknown}")
    seconds = {}
    for backend in chosen:
        wanted = [d for d in (dtypes if dtypes is not None else backend.dtypes) if d in backend.dtypes]
        start = time.perf_counter()
        backend.warmup(wanted)
        seconds[backend.name] = time.perf_counter() - start
    return seconds
