"""The cupy backend's availability check: every reason, on any machine, and never an exception at listing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from typing import Any

import pytest

from fffcore import registry as registry_module
from fffcore.backends.cupy import availability, plugin
from fffcore.backends.cupy.availability import cupy_availability
from fffcore.backends.cupy.plugin import CupyBackend


class CudaRuntimeError(RuntimeError):
    """Stands in for cupy_backends' CUDARuntimeError, a RuntimeError subclass."""


def fake_cupy(
    *,
    device_count: Any = 1,
    capabilities: tuple[str, ...] = ("90",),
    nvrtc: Any = (13, 0),
) -> types.SimpleNamespace:
    """A module-like object with the parts of cupy the check reads; an exception instance is raised instead."""

    def answer(value: Any) -> Any:
        if isinstance(value, BaseException):
            raise value
        return value

    class Device:
        def __init__(self, device_id: int) -> None:
            self.compute_capability = answer(capabilities[device_id])

    return types.SimpleNamespace(
        __version__="14.2.0",
        cuda=types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDeviceCount=lambda: answer(device_count)),
            Device=Device,
            nvrtc=types.SimpleNamespace(getVersion=lambda: answer(nvrtc)),
        ),
    )


def check_with(module: Any) -> Any:
    return cupy_availability(find_spec=lambda name: object(), import_module=lambda name: module)


def test_cupy_not_installed() -> None:
    status = cupy_availability(find_spec=lambda name: None)
    assert not status.available
    assert status.reason == "cupy is not installed"
    assert "pip install" in status.fix


def test_a_broken_installation_is_a_reason() -> None:
    def broken_spec(name: str) -> Any:
        raise ValueError("cupy.__spec__ is None")

    def broken_import(name: str) -> Any:
        raise ImportError("libcuda.so.1: cannot open shared object file")

    assert (
        cupy_availability(find_spec=broken_spec).reason == "looking for cupy raised ValueError: cupy.__spec__ is None"
    )
    status = cupy_availability(find_spec=lambda name: object(), import_module=broken_import)
    assert (
        status.reason
        == "cupy is installed but failed to import: ImportError: libcuda.so.1: cannot open shared object file"
    )


def test_no_driver() -> None:
    error = CudaRuntimeError(
        "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
    )
    status = check_with(fake_cupy(device_count=error))
    assert not status.available
    assert status.reason == (
        "cupy 14.2.0 found no usable CUDA device or driver: CudaRuntimeError: cudaErrorInsufficientDriver: "
        "CUDA driver version is insufficient for CUDA runtime version"
    )
    assert "NVIDIA GPU" in status.fix


def test_no_device() -> None:
    assert check_with(fake_cupy(device_count=0)).reason == "cupy 14.2.0 found no CUDA device"


def test_compute_capability_too_old() -> None:
    status = check_with(fake_cupy(device_count=2, capabilities=("61", "52")))
    assert not status.available
    assert status.reason == (
        "device 0: compute capability 6.1 is older than the 7.0 the kernels need; "
        "device 1: compute capability 5.2 is older than the 7.0 the kernels need"
    )
    assert "7.0 or newer" in status.fix


def test_one_new_enough_device_suffices() -> None:
    assert check_with(fake_cupy(device_count=2, capabilities=("61", "90"))).available


def test_a_failing_device_query_is_a_reason() -> None:
    status = check_with(fake_cupy(capabilities=(CudaRuntimeError("cudaErrorUnknown"),)))  # type: ignore[arg-type]
    assert status.reason == "cupy 14.2.0 could not query the CUDA device: CudaRuntimeError: cudaErrorUnknown"


def test_missing_nvrtc() -> None:
    status = check_with(fake_cupy(nvrtc=OSError("libnvrtc.so.12: cannot open shared object file")))
    assert not status.available
    assert status.reason.startswith("cupy 14.2.0 cannot load NVRTC, the CUDA run-time compiler: OSError: libnvrtc")
    assert "ctk" in status.fix


def test_everything_present_is_available() -> None:
    assert check_with(fake_cupy()).available


def test_importing_the_plugin_imports_no_gpu_library() -> None:
    code = (
        "import sys, fffcore.backends.cupy.plugin as p; p.CupyBackend(); "
        "print(sorted(m for m in ('cupy', 'torch', 'numba') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_backend_declaration() -> None:
    backend = CupyBackend()
    assert backend.name == "cupy" and backend.priority == 80
    assert backend.array_types == ("cupy", "numpy") and backend.devices == ("cuda",)
    assert backend.dtypes == ("float32", "float64")


def test_float16_is_declared_only_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(plugin.FLOAT16_VARIABLE, raising=False)
    assert "float16" not in CupyBackend().dtypes
    monkeypatch.setenv(plugin.FLOAT16_VARIABLE, "1")
    assert CupyBackend().dtypes == ("float32", "float64", "float16")
    assert CupyBackend.dtypes == ("float32", "float64")  # the class declaration is untouched


def test_listing_reports_cupy_without_raising() -> None:
    loaded = registry_module.load_registry()
    assert not [plugin for plugin in loaded.broken if "cupy" in plugin.name], loaded.broken
    assert "cupy" in loaded.backends, "fffcore.backends.cupy.plugin must be in BUILTIN_PLUGINS"
    (row,) = [info for info in loaded.infos() if info.name == "cupy"]
    if importlib.util.find_spec("cupy") is None:
        assert not row.available and row.reason == "cupy is not installed"
    assert row.devices == ("cuda",)


def test_numpy_input_never_chooses_cupy_automatically(monkeypatch: pytest.MonkeyPatch) -> None:
    # Even where cupy works, numpy callers stay on a CPU backend unless they ask for cupy.
    monkeypatch.setattr(plugin, "cupy_availability", lambda: availability.AVAILABLE)
    assert CupyBackend().availability().available
    loaded = registry_module.load_registry()
    monkeypatch.setattr(registry_module, "loaded", loaded)
    import numpy as np

    import fffcore

    assert fffcore.resolve_backend(np.zeros((1, 2)), fffcore.FFFParams.random(2, 1, 0, seed=0)).name != "cupy"


def test_real_cupy_without_a_device_is_unavailable_with_the_driver_reason() -> None:
    """Run where cupy is installed but no GPU is (e.g. a venv with cupy-cuda12x on a CPU machine)."""
    cupy = pytest.importorskip("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:
        count = 0
    if count:
        pytest.skip("this machine has a CUDA device; the no-device path cannot be observed here")
    status = CupyBackend().availability()
    assert not status.available
    assert status.reason.startswith(f"cupy {cupy.__version__} found no usable CUDA device or driver: ")
    assert status.fix == availability.DRIVER_FIX
