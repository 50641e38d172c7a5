"""The path of one warm call: the core's modules it passes before the backend, each once, top down."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fffcore
import fffcore.backends
import fffcore.reference

#: Source folders of the installed package, and the package name each maps to.
_ROOTS = {
    Path(fffcore.backends.__file__).parent: "fffcore.backends",
    Path(fffcore.reference.__file__).parent: "fffcore.reference",
    Path(fffcore.__file__).parent: "fffcore",
}
_BACKEND_PACKAGES = ("fffcore.backends", "fffcore.reference")


def _module_of(filename: str) -> str | None:
    path = Path(filename)
    for root, package in _ROOTS.items():
        if root in path.parents:
            parts = path.relative_to(root).with_suffix("").parts
            return ".".join((package, *parts)).removesuffix(".__init__")
    return None


def modules_of_call(call: Callable[[], Any]) -> list[str]:
    """The project modules whose Python functions ``call`` runs, in order, repeats in a row merged."""
    seen: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            module = _module_of(frame.f_code.co_filename)
            if module is not None and (not seen or seen[-1] != module):
                seen.append(module)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return seen


def before_the_backend(path: list[str]) -> list[str]:
    for index, module in enumerate(path):
        if module.startswith(_BACKEND_PACKAGES):
            return path[:index]
    raise AssertionError(f"the call never reached a backend: {path}")


def test_the_path_helpers_see_a_module_entered_twice():
    from fffcore import arrays, spec

    def back_and_forth() -> None:
        arrays.array_type(1.0)
        spec.dtype_name(np.dtype("float32"))
        arrays.array_type(2.0)

    assert modules_of_call(back_and_forth) == ["fffcore.arrays", "fffcore.spec", "fffcore.arrays"]


def test_a_warm_call_on_a_numpy_array_passes_three_core_modules_once_each():
    params = fffcore.FFFParams.random(8, 4, 3, seed=0)
    x = np.ones((2, 8), np.float32)
    fffcore.fff(x, params, backend="reference")  # the first call makes the plan
    path = modules_of_call(lambda: fffcore.fff(x, params, backend="reference"))
    assert before_the_backend(path) == ["fffcore.api", "fffcore.arrays", "fffcore.plan"], path


def test_a_warm_call_on_a_torch_tensor_passes_four_core_modules_once_each():
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'fffcore[torch]'")
    from fffcore.torch import FFFInference

    params = fffcore.FFFParams.random(8, 4, 3, seed=0)
    x = torch.ones(2, 8)
    block = FFFInference(params, backend="reference")  # a numpy backend: the tensor crosses a bridge
    for call in (lambda: fffcore.fff(x, params, backend="reference"), lambda: block(x)):
        call()
        path = modules_of_call(call)
        before = before_the_backend(path)
        assert len(before) <= 4 and len(set(before)) == len(before), path
        assert before[-2:] == ["fffcore.plan", "fffcore.bridging"], path
