"""Conformance cases: small, printable descriptions that build layers and inputs deterministically.

Hypothesis draws a :class:`Case` (the structure and a numpy seed), not the
numbers themselves, so that drawing a depth-11 layer with 768 inputs stays
cheap, a shrunk failure reads as a handful of integers, and ``repr(case)`` is a
copy-paste reproduction: ``Case(...).build(...)`` gives the same arrays again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fffcore.conformance.adapters import ADAPTERS, round_to_dtype, with_layout
from fffcore.conformance.tolerances import LARGEST_FINITE
from fffcore.params import FFFParams
from fffcore.spec import node_count

#: How the weights are drawn: UltraFastBERT's uniform initialisation, optionally
#: scaled by 10**scale_exponent; or small integers, which make every dot product exact.
WEIGHT_STYLES: tuple[str, ...] = ("init", "integer")

#: How the input values are drawn.
VALUE_STYLES: tuple[str, ...] = ("normal", "integers", "zeros", "magnitudes", "subnormals", "specials")

#: How the upstream gradients ``grad_y`` of the gradient properties are drawn.
UPSTREAM_STYLES: tuple[str, ...] = ("normal", "integers", "specials")

#: Largest |value| of integer-valued weights and inputs, and of integer-valued upstream gradients.
INTEGER_BOUND = 2
UPSTREAM_INTEGER_BOUND = 3

#: Share of the entries of a "specials" grad_y row that take its special value.
UPSTREAM_SPECIAL_SHARE = 0.3


@dataclass(frozen=True)
class LayerSpec:
    """One FFF layer to build: sizes, bias, activation, dtype and the seed of its weights."""

    d_in: int
    d_out: int
    depth: int
    trees: int = 1
    bias: bool = True
    activation: str = "gelu"
    dtype: str = "float64"
    seed: int = 0
    weights: str = "init"
    scale_exponent: int = 0

    def weight_values(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """float64 (w_in (K, N, d_in), b_in (K, N) or None, w_out (K, N, d_out)), before rounding to the dtype."""
        rng = np.random.default_rng(self.seed)
        shape = (self.trees, node_count(self.depth))
        if self.weights == "integer":
            w_in = rng.integers(-INTEGER_BOUND, INTEGER_BOUND + 1, (*shape, self.d_in)).astype(np.float64)
            b_in = rng.integers(-INTEGER_BOUND, INTEGER_BOUND + 1, shape).astype(np.float64) if self.bias else None
            w_out = rng.integers(-INTEGER_BOUND, INTEGER_BOUND + 1, (*shape, self.d_out)).astype(np.float64)
            return w_in, b_in, w_out
        in_bound = 10.0**self.scale_exponent / math.sqrt(self.d_in)
        out_bound = 1.0 / math.sqrt((self.depth + 1) * self.trees)
        w_in = rng.uniform(-in_bound, in_bound, (*shape, self.d_in))
        b_in = rng.uniform(-in_bound, in_bound, shape) if self.bias else None
        w_out = rng.uniform(-out_bound, out_bound, (*shape, self.d_out))
        return w_in, b_in, w_out


@dataclass(frozen=True)
class InputSpec:
    """One input: leading shape, memory layout, how values are drawn, its dtype and seed."""

    leading: tuple[int, ...] = (1,)
    values: str = "normal"
    layout: str = "contiguous"
    dtype: str = "float64"
    seed: int = 0
    exponent: int = 0
    force_ties: bool = False
    upstream: str = "normal"

    def input_values(self, layer: LayerSpec) -> np.ndarray:
        """float64 values of shape ``leading + (d_in,)`` (before rounding to the input dtype)."""
        rng = np.random.default_rng(self.seed)
        shape = (*self.leading, layer.d_in)
        if self.values == "zeros":
            return np.zeros(shape)
        if self.values == "integers":
            return rng.integers(-INTEGER_BOUND, INTEGER_BOUND + 1, shape).astype(np.float64)
        if self.values == "magnitudes":
            # each entry has its own decade in 10**[-exponent, exponent], and a random sign
            decades = rng.uniform(-self.exponent, self.exponent, shape)
            return rng.choice([-1.0, 1.0], shape) * 10.0**decades
        values = rng.standard_normal(shape)
        if self.values == "subnormals":
            # whole multiples of the smallest subnormal of the input dtype, mixed with normal values
            smallest = _smallest_subnormal(self.dtype)
            tiny = rng.integers(-64, 65, shape) * smallest
            values = np.where(rng.random(shape) < 0.7, tiny, values)
        elif self.values == "specials":
            specials = rng.choice([np.inf, -np.inf, np.nan], shape)
            chosen = rng.random(shape) < 0.2
            if values.size:  # at least one special value, in the first row, even in a shrunk one-row case
                chosen.reshape(-1, layer.d_in)[0, rng.integers(layer.d_in)] = True
            values = np.where(chosen, specials, values)
        return values

    def upstream_values(self, layer: LayerSpec) -> np.ndarray:
        """float64 ``grad_y`` of shape ``leading + (d_out,)``, before rounding to the input dtype.

        ``upstream``: "normal"; "integers" in [-3, 3]; or "specials", where each row takes one kind of
        value in about a third of its entries: NaN; +-inf; +-the largest finite value of the layer's
        dtype (and of the input's); subnormals of the layer's dtype with signed zeros; or the whole row
        signed zeros; or none. The first row always holds a NaN and, when d_out > 1, an infinity.
        """
        rng = np.random.default_rng([self.seed, 1])
        shape = (*self.leading, layer.d_out)
        if self.upstream == "integers":
            return rng.integers(-UPSTREAM_INTEGER_BOUND, UPSTREAM_INTEGER_BOUND + 1, shape).astype(np.float64)
        values = rng.standard_normal(shape)
        if self.upstream != "specials" or values.size == 0:
            return values
        rows = values.reshape(-1, layer.d_out)
        kinds = rng.integers(0, 6, rows.shape[0])
        kinds[0] = 0  # a NaN, and an infinity where there is room, even in a shrunk one-row case
        chosen = rng.random(rows.shape) < UPSTREAM_SPECIAL_SHARE
        first, second = rng.permutation(layer.d_out)[:2] if layer.d_out > 1 else (0, None)
        chosen[0, first] = True
        signs = rng.choice([-1.0, 1.0], rows.shape)
        largest = min(LARGEST_FINITE[layer.dtype], LARGEST_FINITE[self.dtype])
        smallest = _smallest_subnormal(layer.dtype)
        by_kind = (
            np.full(rows.shape, np.nan),
            signs * np.inf,
            signs * largest,
            rng.integers(-64, 65, rows.shape) * smallest * np.where(signs > 0, 1.0, -1.0),
            signs * 0.0,
        )
        for kind, special in enumerate(by_kind):
            take = (kinds == kind)[:, None] & (chosen if kind < 4 else True)
            rows = np.where(take, special, rows)
        if second is not None:
            rows[0, second] = signs[0, second] * np.inf
        return rows.reshape(shape)


def _smallest_subnormal(dtype: str) -> float:
    return 2.0**-133 if dtype == "bfloat16" else float(np.finfo(np.dtype(dtype)).smallest_subnormal)


@dataclass(frozen=True)
class Case:
    """A layer, an input, the array type (with device) the input is given in, and that of the parameters.

    The parameters are numpy arrays when the backend accepts numpy arrays
    (``params_array_type="numpy"``), else arrays of the input's library on its
    device; bfloat16 parameters always come in the input's library, since
    numpy has no bfloat16. Each parameter array is built in ``params_layout``
    (one of the layouts its library offers, see
    :func:`fffcore.conformance.adapters.with_layout`).
    """

    layer: LayerSpec
    input: InputSpec
    array_type: str = "numpy"
    device: str = "cpu"
    params_array_type: str = "numpy"
    params_layout: str = "contiguous"

    def build(self) -> Built:
        """The arrays the backend receives and their float64 counterparts for the oracle."""
        adapter = ADAPTERS[self.array_type]
        layer = self.layer
        w_in, b_in, w_out = layer.weight_values()
        rounded = [None if w is None else round_to_dtype(w, layer.dtype) for w in (w_in, b_in, w_out)]
        values = self.input.input_values(layer)
        if self.input.force_ties:
            values, rounded[1] = _force_ties(values, rounded[0], rounded[1], layer)
        oracle_params = FFFParams(rounded[0], rounded[1], rounded[2], layer.activation)
        # numpy has no bfloat16, and a backend without numpy gets its own arrays: the input's library
        own = layer.dtype == "bfloat16" or self.params_array_type != "numpy"
        params_adapter, params_device = (adapter, self.device) if own else (ADAPTERS["numpy"], "cpu")
        params = FFFParams(
            *(
                None if w is None else with_layout(params_adapter, w, layer.dtype, params_device, self.params_layout)
                for w in rounded
            ),
            layer.activation,
        )
        x = with_layout(adapter, values, self.input.dtype, self.device, self.input.layout)
        x_seen = adapter.to_numpy(x).astype(np.float64)  # exactly what the backend receives
        oracle_x = round_to_dtype(x_seen, layer.dtype).reshape(-1, layer.d_in)
        return Built(self, params, oracle_params, x, oracle_x)


@dataclass(frozen=True)
class Built:
    """A built case.

    Attributes:
        case: what was built.
        params: the backend's parameters (numpy, or the adapter's type for bfloat16).
        oracle_params: float64 numpy parameters holding the same values.
        x: the backend's input, shape ``leading + (d_in,)``, in the case's array type and layout.
        oracle_x: (B, d_in) float64: ``x`` rounded to the parameters' dtype, as every backend must round it.
    """

    case: Case
    params: FFFParams
    oracle_params: FFFParams
    x: Any
    oracle_x: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.oracle_x.shape[0])


def _force_ties(
    values: np.ndarray, w_in: np.ndarray, b_in: np.ndarray | None, layer: LayerSpec
) -> tuple[np.ndarray, np.ndarray | None]:
    """Make the first row tie (logit exactly 0) at every level of tree 0's all-left path.

    With bias, each bias on the path is set to minus the (exact, integer) dot
    product; without bias the first row becomes zeros. A backend that branches
    on ``>= 0`` then walks the all-right path instead.
    """
    flat = values.reshape(-1, layer.d_in)
    if flat.shape[0] == 0:
        return values, b_in
    if b_in is None:
        flat = flat.copy()
        flat[0] = 0.0
        return flat.reshape(values.shape), None
    b_in = b_in.copy()
    node = 0
    for _ in range(layer.depth + 1):
        b_in[0, node] = -float(flat[0] @ w_in[0, node])
        node = 2 * node + 1
    return values, b_in
