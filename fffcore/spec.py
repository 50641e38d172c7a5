"""The FFF/CMM specification: tree layout, activations and the dtype rule.

An FFF layer is K independent balanced binary trees of depth D. Each tree has
N = 2**(D+1) - 1 nodes in heap order (root 0; the children of node n are
2n+1 on the left and 2n+2 on the right), and every node is one neuron.

CMM of a row x (d_in,) in tree k::

    node_0 = 0
    for l in 0..D:
        logit_l = x . w_in[k, node_l] + b_in[k, node_l]
        node_{l+1} = 2 * node_l + 1 + (1 if logit_l > 0 else 0)

The branch is strictly ``logit > 0``: an exact zero goes left, and so does
NaN (``NaN > 0`` is false). The FFF output is the tree sum
``y = sum_k sum_l act(logit_{k,l}) * w_out[k, node_{k,l}]``.

Dtype rule, the same for every backend: the computation runs in the
parameters' floating dtype; ``x`` must be a real floating array and is
converted to that dtype (a copy, never in place); integer, bool and complex
inputs are rejected with ``TypeError``. float32 and float64 are required of
every backend; float16 and bfloat16 are optional capabilities a backend
declares.
"""

from __future__ import annotations

from typing import Any

#: Activation names, in the order they are documented. ``gelu`` is the exact,
#: erf-based GELU; ``gelu_tanh`` is its tanh approximation.
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "relu", "silu", "identity")
DEFAULT_ACTIVATION = "gelu"

#: Floating dtypes a backend may declare. Every backend must declare the first two.
REQUIRED_DTYPES: tuple[str, ...] = ("float32", "float64")
FLOATING_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")

#: Node indices are always returned in this dtype.
NODE_DTYPE = "int64"


def node_count(depth: int) -> int:
    """Nodes in one tree of ``depth`` levels below the root: 2**(depth+1) - 1."""
    return (1 << (depth + 1)) - 1


def depth_from_node_count(n_nodes: int) -> int | None:
    """The depth D with ``node_count(D) == n_nodes``, or None when there is none."""
    if n_nodes < 1 or (n_nodes + 1) & n_nodes:
        return None
    return (n_nodes + 1).bit_length() - 2


_DTYPE_NAMES: dict[Any, str] = {}


def dtype_name(dtype: Any) -> str:
    """Canonical name of a numpy, torch or cupy dtype: ``"float32"``, ``"int64"``, ...

    torch spells its dtypes ``torch.float32``; numpy and cupy share numpy's
    dtype objects, whose ``name`` is already canonical. Cached per dtype:
    numpy computes ``dtype.name`` anew on every access (microseconds, on
    every call's path).
    """
    try:
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):  # TypeError: an unhashable stand-in
        pass
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):
        name = str(dtype).rsplit(".", 1)[-1]
    try:
        _DTYPE_NAMES[dtype] = name
    except TypeError:
        pass
    return name


def is_floating(name: str) -> bool:
    """Whether a canonical dtype name is one of the floating dtypes of the spec."""
    return name in FLOATING_DTYPES
