"""FFF layers over Dask arrays: ``fffcore.fff`` and ``fffcore.cmm`` on a ``dask.array.Array`` stay lazy.

Each block of rows is computed by ``fffcore.fff`` (or ``cmm``) on the worker that holds it, with the
backend its array type gets (numpy blocks the CPU backends, cupy blocks cupy) or the one named. The
parameters enter the task graph once, under one key that every block task depends on, so a
distributed scheduler sends them to each worker once rather than with every task.

The feature axis must be one block, since every row needs all its features: a split feature axis is
merged here, with rows per block lowered where needed to keep blocks within Dask's
``array.chunk-size`` setting (a ValueError when even one row would not fit).
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

import numpy as np

from fffcore.arrays import host_values, inspect_array
from fffcore.params import FFFParams
from fffcore.plan import check_input_shape, plan_for


def dask_fff(x: Any, params: FFFParams, backend: str | None, params_in_graph: Any = None) -> Any:
    """``fffcore.fff`` on a Dask array ``x`` of shape (..., d_in): a lazy Dask array (..., d_out) in
    ``params.dtype``, with ``x``'s blocks along the leading axes and its block type (numpy, cupy).

    ``params_in_graph``: ``params`` already on a cluster (a ``distributed`` future of them), used in
    their place in the graph; None puts them in the graph (:func:`_params_in_graph`).
    """
    x, meta_y = _prepared(x, params, backend, "fff")
    if params_in_graph is None:
        params_in_graph = _params_in_graph(params)
    return x.map_blocks(
        _fff_block,
        params_in_graph,
        backend,
        chunks=x.chunks[:-1] + ((params.d_out,),),
        dtype=meta_y.dtype,
        meta=meta_y,
        name=f"fffcore-fff-{_token(x, params_in_graph, backend)}",
    )


def dask_cmm(x: Any, params: FFFParams, backend: str | None) -> tuple[Any, Any]:
    """``fffcore.cmm`` on a Dask array ``x`` of shape (..., d_in): lazy ``logits`` (..., K, D+1) in
    ``params.dtype`` and ``nodes`` (..., K, D+1) int64. Both come from one task per block, so
    computing them together (``dask.compute(logits, nodes)``) runs each block once."""
    from dask.array.utils import meta_from_array

    x, (meta_logits, meta_nodes) = _prepared(x, params, backend, "cmm")
    params_in_graph = _params_in_graph(params)
    token = _token(x, params_in_graph, backend)
    # One task per block returns the pair; its "array" holds tuples and is only ever indexed below.
    pairs = x.map_blocks(
        _cmm_block,
        params_in_graph,
        backend,
        chunks=x.chunks[:-1] + ((1,),),
        dtype=object,
        meta=meta_from_array(np.empty(0, dtype=object), ndim=x.ndim),
        name=f"fffcore-cmm-{token}",
    )
    tail = x.chunks[:-1] + ((params.trees,), (params.depth + 1,))
    halves = []
    for index, meta in ((0, meta_logits), (1, meta_nodes)):
        halves.append(
            pairs.map_blocks(
                operator.itemgetter(index),
                chunks=tail,
                new_axis=[x.ndim],
                dtype=meta.dtype,
                meta=meta,
                name=f"fffcore-cmm-{('logits', 'nodes')[index]}-{token}",
            )
        )
    return halves[0], halves[1]


def _fff_block(block: Any, params: FFFParams, backend: str | None) -> Any:
    block, kind, device = inspect_array(block)
    return plan_for(block, kind, device, params, backend).fff(block, params)


def _cmm_block(block: Any, params: FFFParams, backend: str | None) -> tuple[Any, Any]:
    block, kind, device = inspect_array(block)
    return plan_for(block, kind, device, params, backend).cmm(block, params)


def _prepared(x: Any, params: FFFParams, backend: str | None, operation: str) -> tuple[Any, Any]:
    """``x`` with its feature axis in one block, and the result's meta from a zero-row call.

    The zero-row call runs the whole check of a real one (parameters, dtype, backend, activation)
    now, so a bad call fails here rather than inside a worker at compute time.
    """
    if not isinstance(params, FFFParams):
        raise TypeError(f"params: expected FFFParams, got {type(params).__name__}")
    check_input_shape(x.shape, params.d_in)
    empty = np.empty_like(x._meta, shape=(0, params.d_in), dtype=x.dtype)  # the block type's own empty array
    meta = _fff_block(empty, params, backend) if operation == "fff" else _cmm_block(empty, params, backend)
    if len(x.chunks[-1]) > 1:
        x = _merge_feature_axis(x)
    return x, meta


def _merge_feature_axis(x: Any) -> Any:
    """``x`` with the last axis in one block, rows per block lowered to stay within ``array.chunk-size``."""
    import dask
    from dask.utils import parse_bytes

    limit = parse_bytes(dask.config.get("array.chunk-size"))
    row_bytes = x.shape[-1] * x.dtype.itemsize
    if row_bytes > limit:
        raise ValueError(
            f"x: its feature axis ({x.shape[-1]} values, split into {len(x.chunks[-1])} blocks) must be one "
            f"block, and one row of it ({row_bytes} bytes) exceeds Dask's array.chunk-size ({limit} bytes); "
            "raise it: dask.config.set({'array.chunk-size': '1GiB'})"
        )
    # Bytes of a merged block for each row of the first axis: the other leading axes keep their blocks.
    per_first = row_bytes * int(np.prod([max(c, default=1) for c in x.chunks[1:-1]]))
    first = max(x.chunks[0], default=1) if x.ndim > 1 else 1
    if x.ndim == 1 or first * per_first <= limit:
        return x.rechunk({x.ndim - 1: -1})
    return x.rechunk({0: max(1, limit // per_first), x.ndim - 1: -1})


def _params_in_graph(params: FFFParams) -> Any:
    """``params`` as one Dask key, named by its contents, that every block task depends on: a literal of
    the graph, so any scheduler runs it. (``fff apply`` scatters the layer to its cluster instead and
    passes the future, so that its graphs stay small: :func:`params_key`.)"""
    import dask

    return dask.delayed(params, pure=True, name=params_key(params))


def params_key(params: FFFParams) -> str:
    """The Dask key of ``params``: equal layers share it, different ones never do."""
    return f"fffcore-params-{params_token(params)}"


#: Tokens of parameters objects, kept while they live (their values never change after construction).
_tokens: weakref.WeakKeyDictionary[FFFParams, str] = weakref.WeakKeyDictionary()


def params_token(params: FFFParams) -> str:
    """A hash of the parameters' values and activation: equal layers share it, different ones never do.

    Computed once per parameters object.
    """
    token = _tokens.get(params)
    if token is None:
        from dask.base import tokenize

        arrays = [None if a is None else host_values(a) for a in (params.w_in, params.b_in, params.w_out)]
        token = _tokens[params] = str(tokenize(*arrays, params.activation, params.dtype))
    return token


def _token(x: Any, params_in_graph: Any, backend: str | None) -> str:
    from dask.base import tokenize

    return str(tokenize(x.name, str(params_in_graph.key), backend))
