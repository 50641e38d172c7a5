"""The machine a benchmark ran on, and pinning every thread pool to one count.

Thread pools involved: numpy's BLAS (OpenBLAS in numpy's wheels), torch's
intra-op pool, and numba's parallel pool. Each is pinned through its own
runtime call; numpy's OpenBLAS has none in numpy itself, so it is reached
through ``threadpoolctl`` when installed, else through OpenBLAS's own
``*_set_num_threads`` symbol in the library numpy loaded.
"""

from __future__ import annotations

import ctypes
import datetime
import importlib.util
import os
import platform
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

#: Distributions whose versions a result records (looked up without importing them).
LIBRARIES = ("fffcore", "numpy", "numba", "torch", "cupy-cuda12x", "cupy-cuda11x", "pytest-benchmark", "matplotlib")
#: Environment variables that size thread pools when a library starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (runnable processes): above the core count, timings are inflated."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):  # not available on this OS
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_revision() -> str:
    """The git commit of the fffcore checkout being run (with ``+changes`` when its tracked files
    differ from it), or the installed version when it is not a git checkout."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        try:
            return f"fffcore {version('fffcore')}"
        except PackageNotFoundError:
            return "unknown"
    return commit + ("+changes" if dirty else "")


def describe_machine(threads: dict[str, str]) -> dict[str, Any]:
    """CPU, cores, OS, Python, library versions and the thread settings in force."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "available_cores": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
        "threads": threads,
        "thread_environment": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
        "load_average": load_average(),
        "source": source_revision(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def pin_threads(count: int) -> dict[str, str]:
    """Set every thread pool the benchmarks use to ``count`` threads; return what each pool has now.

    Libraries already imported are set through their runtime calls; for the
    ones not imported yet (torch takes seconds to import, so it is not imported
    just to pin it) ``OMP_NUM_THREADS`` (read by torch) and ``NUMBA_NUM_THREADS``
    (read by numba) are set, which they read when they start. Call
    :func:`thread_settings` after the run to record what was in force.
    """
    if count < 1:
        raise ValueError(f"threads: expected >= 1, got {count}")
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(count)
    blas = _pin_numpy_blas(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    return thread_settings(blas)


def thread_settings(blas: str | None = None) -> dict[str, str]:
    """Threads of each pool now: numpy's BLAS, and torch's and numba's where they have been imported."""
    settings = {"numpy BLAS": blas if blas is not None else _numpy_blas_threads()}
    if "torch" in sys.modules:
        settings["torch intra-op"] = str(sys.modules["torch"].get_num_threads())
    else:
        settings["torch intra-op"] = f"not imported (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        settings["numba"] = f"{numba.get_num_threads()} of NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}"
    else:
        settings["numba"] = f"not imported (NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'unset')})"
    return settings


def _numpy_blas_threads() -> str:
    return _pin_numpy_blas(None)


def _pin_numpy_blas(count: int | None) -> str:
    """Set numpy's BLAS to ``count`` threads (None: only ask) and say how many it has and which BLAS it is."""
    if importlib.util.find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_info, threadpool_limits

        if count is not None:
            threadpool_limits(limits=count, user_api="blas")  # stays in force for the process
        pools = [f"{p['num_threads']} ({p['internal_api']})" for p in threadpool_info() if p["user_api"] == "blas"]
        return ", ".join(pools) or "no BLAS found by threadpoolctl"
    found = _openblas_thread_symbols()
    if found is not None:
        library, prefix, suffix, getter, setter = found
        if count is not None:
            setter(ctypes.c_int(count))
        config = getattr(library, f"{prefix}_get_config{suffix}", None)
        name = "OpenBLAS"
        if config is not None:
            config.restype = ctypes.c_char_p
            name = config().decode(errors="replace").split("  ")[0]
        return f"{getter()} ({name})"
    return "not pinned (no threadpoolctl, no OpenBLAS found): set OPENBLAS_NUM_THREADS/OMP_NUM_THREADS before starting"


def blas_thread_functions() -> tuple[Callable[[], int], Callable[[int], None]]:
    """``(get, set)`` for the thread count of numpy's BLAS, cheap enough to call around each call.

    OpenBLAS's own functions where numpy loaded OpenBLAS (a microsecond through ctypes), else
    threadpoolctl's (slower: it looks the libraries up on every call).
    """
    found = _openblas_thread_symbols()
    if found is not None:
        _, _, _, getter, setter = found
        return (lambda: int(getter())), (lambda count: setter(ctypes.c_int(count)))
    from threadpoolctl import threadpool_info, threadpool_limits

    def get() -> int:
        return max([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"], default=1)

    return get, lambda count: threadpool_limits(limits=count, user_api="blas") and None


def _openblas_thread_symbols() -> tuple[ctypes.CDLL, str, str, Any, Any] | None:
    """``(library, prefix, suffix, get_num_threads, set_num_threads)`` of the first OpenBLAS mapped
    into this process that has them (numpy wheels name them ``scipy_openblas*64_``), or None."""
    for library in _loaded_openblas():
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
            setter = getattr(library, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(library, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                return library, prefix, suffix, getter, setter
    return None


def _loaded_openblas() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries mapped into this process (Linux: read from /proc/self/maps)."""
    import numpy  # noqa: F401  (numpy loads its BLAS at import)

    paths: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1] if line.strip() else ""
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        return []
    libraries = []
    for path in paths:
        try:
            libraries.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libraries
