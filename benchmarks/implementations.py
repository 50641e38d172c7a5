"""Turning an implementation id into something to time: ``prepare(case)``.

Ids (see :mod:`fffcore.benchmarks.cases`):

* ``fff:<backend>``: a registered fffcore backend, called through the public
  ``fffcore.fff(x, params, backend=...)``, so the time includes what a user's
  call costs (validation, dispatch), with ``x`` in the backend's first
  declared array library on its first declared device (the CPU when it has one);
* ``dense:<library>:<hidden>``: a dense feedforward layer of ``hidden``
  neurons in numpy or torch (:mod:`fffcore.benchmarks.baselines`);
* ``paper:torch``: the paper's PyTorch FFF (per-level index_select + bmm).

Every implementation of one shape sees the same inputs (standard normal rows,
like the layer-normed hidden states a BERT feedforward receives) and every FFF
implementation the same parameters. Each timed call takes the next input of a
pool (:func:`input_pool`), as real inference gets new rows every time: with one
input repeated, an FFF would follow the same paths and find their weights in
cache on every call, which a real workload does not.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fffcore.benchmarks.cases import ONE_THREAD, Case, Shape
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
        call: one call of the layer on the next input of the pool, waiting for the device.
        check_call: one call on the pool's first input, ``x``; returns the output the check examines.
        x: (rows, d_in) numpy rows in the shape's dtype, the pool's first input.
        params: the FFF parameters (None for dense layers, which have their own weights).
        path: for fffcore backends, a function returning the nodes (rows, K, D+1) the
            backend visits on ``x`` (from its ``cmm``), used by the check; None otherwise.
        where: the array library and device the input lives in, e.g. ``"numpy/cpu"``.
        version: the version of the library behind it.
    """

    case: Case
    kind: str
    call: Callable[[], Any]
    check_call: Callable[[], Any]
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


#: Inputs in a pool: enough that small batches rarely meet the same rows twice in a sample,
#: within POOL_BYTES for large ones (two at least, so no call repeats the one before).
POOL_MAX = 64
POOL_BYTES = 64 * 2**20


def pool_size(rows: int, d_in: int, dtype: str) -> int:
    """How many different inputs of ``rows`` rows the timed calls rotate through."""
    size = max(1, rows * d_in * np.dtype(dtype).itemsize)
    return max(2, min(POOL_MAX, POOL_BYTES // size))


def input_pool(shape: Shape, rows: int | None = None) -> list[np.ndarray]:
    """Different (rows, d_in) inputs of ``shape``, the first being :func:`input_for`'s."""
    first = input_for(shape, rows)
    count = pool_size(first.shape[0], shape.d_in, shape.dtype)
    rng = np.random.default_rng(INPUT_SEED + 1)
    others = [rng.standard_normal(first.shape).astype(shape.dtype) for _ in range(count - 1)]
    return [first, *others]


def rotating(call_on: Callable[[Any], Any], inputs: list[Any]) -> Callable[[], Any]:
    """A call on the next of ``inputs`` each time (cycling)."""
    position = [0]

    def call() -> Any:
        x = inputs[position[0]]
        position[0] = (position[0] + 1) % len(inputs)
        return call_on(x)

    return call


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
    library = rest.split(":", 1)[0].removesuffix(ONE_THREAD)
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
    return _PREPARERS[family](case, input_pool(case.shape, rows))


def _prepare_backend(case: Case, pool: list[np.ndarray]) -> Prepared:
    from fffcore.api import cmm, fff
    from fffcore.registry import registry

    name = case.implementation.split(":", 1)[1]
    backend = registry().get(name)
    params = params_for(case.shape)
    library = backend.array_types[0]
    device = "cpu" if "cpu" in backend.devices else backend.devices[0]
    there = [to_library(x, library, device) for x in pool]

    def call_on(x_there: Any) -> Any:
        y = fff(x_there, params, backend=name)
        synchronize(y)
        return y

    def path() -> np.ndarray:
        from fffcore.benchmarks.transfer import to_numpy

        return to_numpy(cmm(there[0], params, backend=name).nodes)

    return Prepared(
        case,
        "fff",
        rotating(call_on, there),
        lambda: call_on(there[0]),
        pool[0],
        params,
        path,
        f"{library}/{device}",
        backend.version(),
    )


@functools.lru_cache(maxsize=4)
def _dense_layer(library: str, d_in: int, hidden: int, d_out: int, dtype: str) -> Callable[[Any], Any]:
    from fffcore.benchmarks import baselines

    builders = {"numpy": baselines.make_dense_numpy, "torch": baselines.make_dense_torch}
    if library not in builders:
        raise Unavailable(f"no dense baseline in {library!r}; expected one of {sorted(builders)}")
    return builders[library](d_in, hidden, d_out, dtype=dtype, seed=DENSE_SEED)


def _prepare_dense(case: Case, pool: list[np.ndarray]) -> Prepared:
    _, library_id, hidden = case.implementation.split(":")
    library = library_id.removesuffix(ONE_THREAD)
    shape = case.shape
    layer = _dense_layer(library, shape.d_in, int(hidden), shape.d_out, shape.dtype)
    there = [to_library(x, library) for x in pool]
    set_threads = thread_setter(library) if library_id.endswith(ONE_THREAD) else None

    def call_on(x_there: Any) -> Any:
        # Setting the thread count costs about a microsecond, against 0.1 ms and more for a dense layer.
        previous = None if set_threads is None else set_threads(1)
        try:
            y = layer(x_there)
            synchronize(y)
            return y
        finally:
            if previous is not None:
                set_threads(previous)

    return Prepared(
        case,
        "dense",
        rotating(call_on, there),
        lambda: call_on(there[0]),
        pool[0],
        None,
        None,
        f"{library}/cpu",
        _library_version(library),
    )


def thread_setter(library: str) -> Callable[[int], int]:
    """A function that sets ``library``'s compute threads (numpy: its BLAS) and returns the previous count."""
    if library == "torch":
        import torch

        def set_torch(count: int) -> int:
            previous = torch.get_num_threads()
            torch.set_num_threads(count)
            return previous

        return set_torch
    from fffcore.benchmarks.machine import blas_thread_functions

    get_blas, set_blas = blas_thread_functions()

    def set_numpy(count: int) -> int:
        previous = get_blas()
        set_blas(count)
        return previous

    return set_numpy


def _prepare_paper(case: Case, pool: list[np.ndarray]) -> Prepared:
    from fffcore.benchmarks.baselines import make_paper_torch_fff

    params = params_for(case.shape)
    layer = make_paper_torch_fff(params)
    there = [to_library(x, "torch") for x in pool]

    def call_on(x_there: Any) -> Any:
        y = layer(x_there)
        synchronize(y)
        return y

    return Prepared(
        case,
        "paper",
        rotating(call_on, there),
        lambda: call_on(there[0]),
        pool[0],
        params,
        None,
        "torch/cpu",
        _library_version("torch"),
    )


_PREPARERS: dict[str, Callable[[Case, list[np.ndarray]], Prepared]] = {
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
