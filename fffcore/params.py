"""``FFFParams``: one validated set of FFF layer parameters."""

from __future__ import annotations

import math
import os
from dataclasses import InitVar, dataclass, field
from typing import Any

import numpy as np

from fffcore.arrays import array_type, masked_array_error, require_dense_tensor
from fffcore.layer_file import read_layer, write_layer
from fffcore.spec import (
    ACTIVATIONS,
    DEFAULT_ACTIVATION,
    FLOATING_DTYPES,
    depth_from_node_count,
    dtype_name,
    is_floating,
    node_count,
)


@dataclass(frozen=True, eq=False)
class FFFParams:
    """The weights of one FFF layer, validated once at construction.

    Attributes:
        w_in: (K, N, d_in) input weights, one row per node in heap order.
        b_in: (K, N) input biases, or None for a layer without bias.
        w_out: (K, N, d_out) output weights, one row per node.
        activation: one of :data:`fffcore.spec.ACTIVATIONS`.

    All arrays share one floating dtype and one array type.

    The values are fixed at construction, for every backend alike:

    - numpy arrays are copied into read-only C-contiguous arrays these parameters own, so
      writing to the caller's arrays afterwards changes nothing here. ``copy=False`` skips
      the copy where it can (read-only views of the caller's arrays, for layers too large to
      hold twice); the caller then promises not to write to them, since backends that
      converted them already would not see the change.
    - torch tensors are kept as given (no second copy in device memory), and their version
      counters are remembered: a call after one of them was written in place raises a
      ``ValueError`` instead of computing with a mix of old and new values.
      :class:`fffcore.torch.FFFInference` builds new parameters after each such write.
      (Tensors made under ``torch.inference_mode`` keep no version counter; writes to
      them cannot be noticed.)
    - cupy arrays are kept as given; writing to them after construction is not supported.
    """

    w_in: Any
    b_in: Any
    w_out: Any
    activation: str = DEFAULT_ACTIVATION
    copy: InitVar[bool] = True
    # Derived once in __post_init__; listed here so the dataclass repr shows them.
    depth: int = field(init=False)
    trees: int = field(init=False)
    n_nodes: int = field(init=False)
    d_in: int = field(init=False)
    d_out: int = field(init=False)
    dtype: str = field(init=False)
    #: The torch tensors' version counters at construction (``b_in``'s -1 without a bias), or None
    #: for other arrays and for inference tensors, which keep none (see :meth:`require_unchanged`).
    versions: tuple[int, ...] | None = field(init=False, repr=False, default=None)

    def __post_init__(self, copy: bool) -> None:
        w_in = _as_array(self.w_in, "w_in", copy)
        w_out = _as_array(self.w_out, "w_out", copy)
        b_in = None if self.b_in is None else _as_array(self.b_in, "b_in", copy)

        trees, n_nodes, depth, d_in, d_out = layer_shape(
            tuple(w_in.shape), None if b_in is None else tuple(b_in.shape), tuple(w_out.shape)
        )

        dtype = dtype_name(w_in.dtype)
        if not is_floating(dtype):
            raise TypeError(f"w_in: expected a floating dtype {FLOATING_DTYPES}, got {dtype}")
        for name, array in (("b_in", b_in), ("w_out", w_out)):
            if array is not None and dtype_name(array.dtype) != dtype:
                raise TypeError(f"{name}: expected dtype {dtype} to match w_in, got {dtype_name(array.dtype)}")
        kinds = {array_type(a) for a in (w_in, b_in, w_out) if a is not None}
        if len(kinds) != 1:
            raise TypeError(f"w_in, b_in, w_out: expected one array type, got {sorted(kinds)}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {self.activation!r}")

        for name, value in (
            ("w_in", w_in),
            ("b_in", b_in),
            ("w_out", w_out),
            ("depth", depth),
            ("trees", trees),
            ("n_nodes", n_nodes),
            ("d_in", d_in),
            ("d_out", d_out),
            ("dtype", dtype),
            ("versions", _torch_versions(w_in, b_in, w_out)),
        ):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return (
            f"FFFParams(trees={self.trees}, depth={self.depth}, d_in={self.d_in}, "
            f"d_out={self.d_out}, dtype={self.dtype}, bias={self.has_bias}, "
            f"activation={self.activation!r}, array_type={self.array_type!r})"
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            if isinstance(value, np.ndarray) and value.flags.writeable:  # unpickled arrays come back writable
                value = value.view()
                value.flags.writeable = False
            object.__setattr__(self, name, value)
        # unpickled tensors start new version counters
        object.__setattr__(self, "versions", _torch_versions(self.w_in, self.b_in, self.w_out))

    def require_unchanged(self) -> None:
        """Raise a ValueError when a torch tensor of these parameters was written since construction.

        Backends may have converted or cached the values they first saw, so computing on would
        mix old and new weights. Costs a few attribute reads; fffcore calls it on every call.
        """
        if self.versions is None:
            return
        # versions is set only for torch tensors that keep counters: read them directly
        current = (self.w_in._version, -1 if self.b_in is None else self.b_in._version, self.w_out._version)
        if current == self.versions:
            return
        names = ("w_in", "b_in", "w_out")
        changed = [name for name, old, new in zip(names, self.versions, current, strict=True) if old != new]
        raise ValueError(
            f"params: {', '.join(changed)} changed in place after these FFFParams were built; "
            "build new FFFParams from the changed tensors (fffcore.torch.FFFInference does so itself)"
        )

    @property
    def has_bias(self) -> bool:
        return self.b_in is not None

    @property
    def array_type(self) -> str:
        """``"numpy"``, ``"torch"`` or ``"cupy"``: the library the arrays belong to."""
        return array_type(self.w_in)

    def astype(self, dtype: str | np.dtype) -> FFFParams:
        """A copy of numpy parameters in another floating dtype."""
        self._require_numpy("astype")
        target = np.dtype(dtype)
        return FFFParams(
            self.w_in.astype(target),
            None if self.b_in is None else self.b_in.astype(target),
            self.w_out.astype(target),
            self.activation,
            copy=False,  # the arrays are new and nobody else holds them
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this layer to ``path`` as a layer file (safetensors; see :mod:`fffcore.layer_file`).

        Atomic: the bytes go to a new file created beside ``path`` (never through a link planted there),
        renamed over ``path`` when complete and removed on failure. A ``path`` that is a folder is a
        ValueError."""
        write_layer(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FFFParams:
        """The layer in the layer file ``path`` (written by :meth:`save`), in numpy arrays (torch for bfloat16).

        Anything wrong with the file, down to the last byte range, is one ValueError naming ``path``."""
        arrays, activation = read_layer(path)
        try:
            # read_layer's arrays are new copies that nobody else holds
            return cls(arrays["w_in"], arrays.get("b_in"), arrays["w_out"], activation, copy=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error

    def with_activation(self, activation: str) -> FFFParams:
        """The same weights with another activation (no copy)."""
        return FFFParams(self.w_in, self.b_in, self.w_out, activation, copy=False)

    def _require_numpy(self, what: str) -> None:
        if self.array_type != "numpy":
            raise TypeError(f"FFFParams.{what}: expected numpy parameters, got {self.array_type}")

    @classmethod
    def random(
        cls,
        d_in: int,
        d_out: int,
        depth: int,
        trees: int = 1,
        *,
        bias: bool = True,
        activation: str = DEFAULT_ACTIVATION,
        dtype: str | np.dtype = "float32",
        seed: int | None = None,
    ) -> FFFParams:
        """Random numpy parameters with UltraFastBERT's initialisation.

        ``w_in`` and ``b_in`` are uniform in +-1/sqrt(d_in); ``w_out`` is uniform in
        +-1/sqrt((depth+1) * trees), the number of neurons each row visits.
        Values are drawn in float64 from ``numpy.random.default_rng(seed)`` and
        then rounded to ``dtype``, so one seed gives the same layer in every dtype.
        """
        for name, value, low in (("d_in", d_in, 1), ("d_out", d_out, 1), ("depth", depth, 0), ("trees", trees, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value}")
        try:
            target = np.dtype(dtype)
        except TypeError as error:
            raise TypeError(f"dtype: expected a numpy floating dtype, got {dtype!r}") from error
        if not is_floating(target.name):
            raise TypeError(f"dtype: expected a numpy floating dtype, got {target.name}")
        rng = np.random.default_rng(seed)
        n_nodes = node_count(int(depth))
        in_bound = 1.0 / math.sqrt(d_in)
        out_bound = 1.0 / math.sqrt((depth + 1) * trees)
        w_in = rng.uniform(-in_bound, in_bound, (trees, n_nodes, d_in))
        b_in = rng.uniform(-in_bound, in_bound, (trees, n_nodes)) if bias else None
        w_out = rng.uniform(-out_bound, out_bound, (trees, n_nodes, d_out))
        return cls(
            w_in.astype(target),
            None if b_in is None else b_in.astype(target),
            w_out.astype(target),
            activation,
            copy=False,  # the arrays are new and nobody else holds them
        )


def layer_shape(
    w_in: tuple[int, ...], b_in: tuple[int, ...] | None, w_out: tuple[int, ...]
) -> tuple[int, int, int, int, int]:
    """``(trees, nodes, depth, d_in, d_out)`` of a layer with arrays of these shapes, or a ValueError
    naming the array whose shape is wrong. (The torch operators check shapes with it while tracing,
    where no :class:`FFFParams` can be built.)"""
    if len(w_in) != 3:
        raise ValueError(
            f"w_in: expected a 3-D array of shape (trees, nodes, d_in), got {len(w_in)}-D shape {tuple(w_in)}"
        )
    trees, n_nodes, d_in = (int(s) for s in w_in)
    if trees < 1:
        raise ValueError(f"w_in: expected at least 1 tree, got shape {tuple(w_in)}")
    depth = depth_from_node_count(n_nodes)
    if depth is None:
        raise ValueError(f"w_in: the node count (axis 1) must be 2**(depth+1) - 1 (1, 3, 7, 15, ...), got {n_nodes}")
    if d_in < 1:
        raise ValueError(f"w_in: expected d_in >= 1 (axis 2), got shape {tuple(w_in)}")
    if len(w_out) != 3 or tuple(w_out[:2]) != (trees, n_nodes):
        raise ValueError(
            f"w_out: expected shape ({trees}, {n_nodes}, d_out) to match w_in's (trees, nodes), got {tuple(w_out)}"
        )
    d_out = int(w_out[2])
    if d_out < 1:
        raise ValueError(f"w_out: expected d_out >= 1 (axis 2), got shape {tuple(w_out)}")
    if b_in is not None and tuple(b_in) != (trees, n_nodes):
        raise ValueError(f"b_in: expected shape ({trees}, {n_nodes}) to match w_in's (trees, nodes), got {tuple(b_in)}")
    return trees, n_nodes, depth, d_in, d_out


def _torch_versions(w_in: Any, b_in: Any, w_out: Any) -> tuple[int, ...] | None:
    """The version counters of torch parameters; None for other arrays and for inference tensors."""
    if array_type(w_in) != "torch" or w_in.is_inference():
        return None
    return (w_in._version, -1 if b_in is None else b_in._version, w_out._version)


def _as_array(value: Any, name: str, copy: bool = True) -> Any:
    """numpy arrays become read-only, contiguous, native-byte-order arrays (copies unless ``copy``
    is false); other array types pass through.

    A non-native byte order (``astype('>f4')`` on a little-endian machine) is converted once,
    here: compiled kernels read memory in the machine's order and would compute garbage.
    """
    if value is None:
        raise TypeError(f"{name}: expected an array, got None")
    if isinstance(value, np.ma.MaskedArray):
        raise masked_array_error(name)
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, np.ndarray):
        if array_type(value) == "torch":
            require_dense_tensor(value, name)
        return value
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"{name}: expected an array, got {type(value).__name__}: {error}") from error
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="), order="C")  # a new array already
    elif copy:
        array = np.array(array, order="C", copy=True)
    array = np.ascontiguousarray(array)
    view = array.view()
    view.flags.writeable = False
    return view
