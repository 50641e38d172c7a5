"""Turning an implementation id into something to time: ``prepare(case)``.

Ids (see :mod:`fffcore.benchmarks.cases`):

* ``fff:<backend>``: a registered fffcore backend, called through the public
  ``fffcore.fff(x, params, backend=...)``, so the time includes what a user's
  call costs (validation, dispatch), with ``x`` in the backend's first
  declared array library on its first declared device (the CPU when it has one);
* ``dense:<library>:<hidden>``: a dense feedforward layer of ``hidden``
  neurons in numpy or torch (:mod:`fffcore.benchmarks.baselines`);
* ``paper:torch``: the paper's PyTorch FFF (per-level index_select + bmm).

Every implementation of one shape sees the same input rows (standard normal,
like the layer-normed hidden states a BERT feedforward receives) and every FFF
implementation the same parameters.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fffcore.benchmarks.cases import Case, Shape
from fffcore.benchmarks.transfer import synchronize, to_library
from fffcore.params import FFFParams

PARAMS_SEED = 0
INPUT_SEED = 1
DENSE_SEED = 2


class Unavailable(Exception):
    """The implementation cannot run here; the message says why and how to fix it."""


@dataclass
class Prepared:
    """An implementation ready to time on one shape.

    Attributes:
        case: what this is.
        kind: ``"fff"`` (an fffcore backend), ``"dense"`` or ``"paper"`` (the paper's PyTorch FFF).
        call: one call of the layer on the timed input, waiting for the device; returns the output.
        x: (rows, d_in) numpy rows in the shape's dtype, the timed input as numpy.
        params: the FFF parameters (None for dense layers, which have their own weights).
        path: for fffcore backends, a function returning the nodes (rows, K, D+1) the
            backend visits on ``x`` (from its ``cmm``), used by the check; None otherwise.
        where: the array library and device the input lives in, e.g. ``"numpy/cpu"``.
        version: the version of the library behind it.
    """

    case: Case
    kind: str
    call: Callable[[], Any]
    x: np.ndarray
    params: FFFParams | None
    path: Callable[[], np.ndarray] | None
    where: str
    version: str

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


@functools.lru_cache(maxsize=4)
def shape_params(d_in: int, d_out: int, depth: int, trees: int, dtype: str) -> FFFParams:
    """The FFF parameters every implementation of a shape uses (cached: depth 11 takes a moment to draw)."""
    return FFFParams.random(d_in, d_out, depth, trees, dtype=dtype, seed=PARAMS_SEED)


def params_for(shape: Shape) -> FFFParams:
    return shape_params(shape.d_in, shape.d_out, shape.depth, shape.trees, shape.dtype)


@functools.lru_cache(maxsize=2)
def _input_rows(batch: int, d_in: int, dtype: str) -> np.ndarray:
    x = np.random.default_rng(INPUT_SEED).standard_normal((batch, d_in)).astype(dtype)
    x.flags.writeable = False
    return x


def input_for(shape: Shape, rows: int | None = None) -> np.ndarray:
    """(rows, d_in) input of ``shape``: the first ``rows`` of its batch (all of it when None)."""
    x = _input_rows(shape.batch, shape.d_in, shape.dtype)
    return x if rows is None or rows >= shape.batch else x[:rows]


def availability(implementation: str) -> str:
    """Empty when ``implementation`` can run here, else why not and how to fix it."""
    family, _, rest = implementation.partition(":")
    if family == "fff":
        from fffcore import list_backends

        for info in list_backends():
            if info.name == rest:
                if info.available:
                    return ""
                return f"{info.reason}" + (f"; fix: {info.fix}" if info.fix else "")
        return f"no backend {rest!r} is registered (see `fff backends`)"
    library = rest.split(":", 1)[0]
    if family not in ("dense", "paper"):
        return f"unknown implementation family {family!r}; expected fff:, dense: or paper:"
    if importlib.util.find_spec(library) is None:
        return f"{library} is not installed; fix: pip install 'fffcore[{library}]'"
    return ""


def prepare(case: Case, rows: int | None = None) -> Prepared:
    """Build the implementation of ``case`` for its shape, on the first ``rows`` rows (all when None).

    Raises:
        Unavailable: when the implementation cannot run here.
    """
    reason = availability(case.implementation)
    if reason:
        raise Unavailable(reason)
    family = case.implementation.split(":", 1)[0]
    return _PREPARERS[family](case, input_for(case.shape, rows))


def _prepare_backend(case: Case, x: np.ndarray) -> Prepared:
    import fffcore

    name = case.implementation.split(":", 1)[1]
    backend = fffcore.get_backend(name)
    params = params_for(case.shape)
    library = backend.array_types[0]
    device = "cpu" if "cpu" in backend.devices else backend.devices[0]
    x_there = to_library(x, library, device)

    def call() -> Any:
        y = fffcore.fff(x_there, params, backend=name)
        synchronize(y)
        return y

    def path() -> np.ndarray:
        from fffcore.benchmarks.transfer import to_numpy

        return to_numpy(fffcore.cmm(x_there, params, backend=name).nodes)

    return Prepared(case, "fff", call, x, params, path, f"{library}/{device}", backend.version())


@functools.lru_cache(maxsize=4)
def _dense_layer(library: str, d_in: int, hidden: int, d_out: int, dtype: str) -> Callable[[Any], Any]:
    from fffcore.benchmarks import baselines

    builders = {"numpy": baselines.make_dense_numpy, "torch": baselines.make_dense_torch}
    if library not in builders:
        raise Unavailable(f"no dense baseline in {library!r}; expected one of {sorted(builders)}")
    return builders[library](d_in, hidden, d_out, dtype=dtype, seed=DENSE_SEED)


def _prepare_dense(case: Case, x: np.ndarray) -> Prepared:
    _, library, hidden = case.implementation.split(":")
    shape = case.shape
    layer = _dense_layer(library, shape.d_in, int(hidden), shape.d_out, shape.dtype)
    x_there = to_library(x, library)

    def call() -> Any:
        y = layer(x_there)
        synchronize(y)
        return y

    return Prepared(case, "dense", call, x, None, None, f"{library}/cpu", _library_version(library))


def _prepare_paper(case: Case, x: np.ndarray) -> Prepared:
    from fffcore.benchmarks.baselines import make_paper_torch_fff

    params = params_for(case.shape)
    layer = make_paper_torch_fff(params)
    x_there = to_library(x, "torch")

    def call() -> Any:
        y = layer(x_there)
        synchronize(y)
        return y

    return Prepared(case, "paper", call, x, params, None, "torch/cpu", _library_version("torch"))


_PREPARERS: dict[str, Callable[[Case, np.ndarray], Prepared]] = {
    "fff": _prepare_backend,
    "dense": _prepare_dense,
    "paper": _prepare_paper,
}


def _library_version(library: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(library)
    except PackageNotFoundError:
        return ""
