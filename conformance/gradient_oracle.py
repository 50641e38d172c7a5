"""The gradients of :mod:`fffcore.backward` in float64 along given paths, with tolerances and IEEE classes.

Every quantity along the path is a :class:`Quantity`: its float64 value, a bound on how far a correct
backend's value may be from it, and what is certain about its IEEE class in every correct backend.

**Tolerances.** Each gradient element is a sum of products of storage values and of intermediates that
carry error; its tolerance adds, term by term (``u_s`` the storage dtype's unit roundoff, ``u_a`` that of
the dtype the backend accumulates in, ``gamma(n, u) = nu / (1 - nu)`` as in :mod:`.tolerances`):

* the logit's error ``z_err = logit_tolerance`` (the forward pass's, same derivation);
* the activation's value and slope at a logit off by that much: ``Lip(act) z_err + u_s |act|`` and
  ``Lip(act') z_err + u_s |act'|`` (``Lip(act')`` bounds ``|act''|``: 0.8 for gelu and gelu_tanh, whose
  second derivatives peak at 2 phi(0) = 0.798 and 0.80, 0.5 for silu, 0 for identity; relu's slope jumps
  at 0, so a logit within its tolerance of 0 may take slope 0 or 1); at a logit that is certainly
  +-inf both are their limits, exactly;
* a product ``a b`` of values with errors ``e_a``, ``e_b``: ``|a| e_b + |b| e_a + e_a e_b``, plus
  ``u_s |a b|`` where the product is rounded to storage (``dz = h act'``);
* a sum of ``n`` terms ``t_i`` with errors ``e_i`` (``h = g . w_out[k, n]``, and each gradient: over
  the K (D+1) visits of a row for ``x``, over the visits of a node for ``w_in``, ``b_in`` and
  ``w_out``): ``P = sum e_i``, ``P + gamma(n + 1, u_a) (S + P)`` with ``S = sum |t_i|``, then for a
  gradient its rounding to storage ``u_s (|value| + that)``, the float64 oracle's own
  ``gamma(n + 1, u64) S``, and an absolute ``(n + 3) tiny`` where anything is nonzero (products that
  underflow). A node's ``n`` is its own number of visits.

With integer-valued data and relu or identity every quantity is an integer, so a gradient whose terms'
magnitudes add up to less than ``1/u_a`` must be exact, after its one rounding to storage
(:attr:`Gradients.scale` holds ``S``).

**IEEE classes** (NaN, +-inf, finite), for NaN, infinities, the largest finite values, subnormals and
signed zeros in ``x`` or ``grad_y``:

* a product is NaN when a factor is NaN or one is infinite and the other zero; a product of finite
  factors that overflows is of unknown class (a fused multiply-add adds it unrounded). Where an infinite
  factor meets one whose error bound reaches zero (a GELU slope near its root at -0.75, a relu slope
  at a logit within its tolerance of 0), a correct backend may give NaN or an infinity: the class is
  unknown. A factor that is certainly zero (relu at a logit certainly below 0, the limits at -inf, a
  row of grad_y that is all zeros) makes the product certainly NaN;
* a sum is NaN when a term is certainly NaN, or it holds a certain +inf and a certain -inf; else
  +-inf when a term is; whatever the order. A sum whose finite terms' magnitudes may reach the largest
  finite number of the dtype it is held in (:func:`~.tolerances.may_overflow`) may overflow to either
  infinity in a correct backend, so its class is unknown, unless a NaN term decides it;
* so NaN reaches exactly the entries whose float64 value is NaN (a NaN in ``grad_y[b, o]``: all of
  ``grad x[b]``, the ``w_in`` and ``b_in`` gradients of every node row b visits, and column o of their
  ``w_out`` gradients), infinities likewise, and an entry of unknown class is not compared.

Zeros are compared by value, not by sign: the sign of a zero sum depends on whether an accumulator starts
at +0 or at its first term, which the spec leaves open.

Large batches are evaluated in chunks of rows (:data:`CHUNK_ELEMENTS`), and the parameter gradients
node by node, so the oracle's memory stays bounded whatever the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fffcore.conformance import tolerances
from fffcore.conformance.cases import Built
from fffcore.reference.activations import activate, derivative
from fffcore.reference.oracle import evaluate_path

#: Lipschitz constants of the activations' derivatives (bounds on |act''|; relu's is handled apart).
SLOPE_LIPSCHITZ = {"gelu": 0.8, "gelu_tanh": 0.81, "silu": 0.5, "relu": 0.0, "identity": 0.0}
#: Activations whose value and slope at -inf are exactly 0 (their limits).
ZERO_AT_MINUS_INFINITY = ("gelu", "gelu_tanh", "silu", "relu")
#: At most this many gathered weights per chunk of rows (16 MiB of float64 per array).
CHUNK_ELEMENTS = 1 << 21
NAMES = ("x", "w_in", "b_in", "w_out")


@dataclass(frozen=True)
class Quantity:
    """A float64 value, the bound on a correct backend's error in it, and what is certain of its class.

    Attributes:
        value: the float64 value (IEEE arithmetic on the exact inputs).
        error: where ``value`` is finite and the class known, a correct backend is within this of it.
        unknown: a correct backend may give another class (finite, +-inf or NaN).
        zero: every correct backend gives exactly zero (of either sign).
    """

    value: np.ndarray
    error: np.ndarray
    unknown: np.ndarray
    zero: np.ndarray

    def maybe_zero(self) -> np.ndarray:
        """A correct backend may give zero here, or a nonzero value where the float64 value is 0."""
        with np.errstate(invalid="ignore"):
            return ~self.zero & np.isfinite(self.value) & (np.abs(self.value) <= self.error)

    def certainly_nan(self) -> np.ndarray:
        return np.isnan(self.value) & ~self.unknown

    def __getitem__(self, index: object) -> Quantity:
        return Quantity(self.value[index], self.error[index], self.unknown[index], self.zero[index])

    def reshape(self, shape: tuple[int, ...]) -> Quantity:
        return Quantity(*(a.reshape(shape) for a in (self.value, self.error, self.unknown, self.zero)))


def exact(values: np.ndarray) -> Quantity:
    """Values every backend holds exactly (inputs and weights, already rounded to the storage dtype)."""
    values = np.asarray(values, dtype=np.float64)
    return Quantity(values, np.zeros(values.shape), np.zeros(values.shape, bool), values == 0)


def product(a: Quantity, b: Quantity, rounding: float = 0.0) -> Quantity:
    """``a * b``, rounded once with unit roundoff ``rounding`` (0: not rounded, a term of a sum)."""
    with np.errstate(all="ignore"):
        value = a.value * b.value
        error = np.abs(a.value) * b.error + np.abs(b.value) * a.error + a.error * b.error + rounding * np.abs(value)
        zero = (a.zero & np.isfinite(b.value) & ~b.unknown) | (b.zero & np.isfinite(a.value) & ~a.unknown)
        unknown = a.unknown | b.unknown | (np.isinf(a.value) & b.maybe_zero()) | (np.isinf(b.value) & a.maybe_zero())
        # finite factors whose product overflows even float64: a fused multiply-add never rounds it to inf
        unknown |= np.isfinite(a.value) & np.isfinite(b.value) & ~np.isfinite(value)
        unknown &= ~(a.certainly_nan() | b.certainly_nan())
    return Quantity(value, np.where(zero, 0.0, error), unknown, zero)


@dataclass
class Sums:
    """Running sums over terms: the float64 sum, ``S = sum |t_i|`` and ``P = sum e_i`` over finite terms,
    and what the terms' classes decide."""

    value: np.ndarray
    scale: np.ndarray
    propagated: np.ndarray
    nan: np.ndarray
    positive_infinity: np.ndarray
    negative_infinity: np.ndarray
    unknown: np.ndarray
    nonzero: np.ndarray

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> Sums:
        floats = [np.zeros(shape) for _ in range(3)]
        return cls(*floats, *(np.zeros(shape, bool) for _ in range(5)))

    @classmethod
    def of(cls, terms: Quantity, axis: int | tuple[int, ...]) -> Sums:
        """Sums of ``terms`` along ``axis``, every class counted (IEEE sums, no BLAS: some skip zeros)."""
        v = terms.value
        with np.errstate(all="ignore"):
            finite = np.isfinite(v)
            known = ~terms.unknown
            return cls(
                v.sum(axis),
                np.where(finite, np.abs(v), 0.0).sum(axis),
                np.where(finite, terms.error, 0.0).sum(axis),
                (np.isnan(v) & known).any(axis),
                ((v == np.inf) & known).any(axis),
                ((v == -np.inf) & known).any(axis),
                terms.unknown.any(axis),
                (~terms.zero).any(axis),
            )

    def add(self, other: Sums, index: object = slice(None)) -> None:
        """Add ``other`` into ``self[index]``."""
        for name in ("value", "scale", "propagated"):
            getattr(self, name)[index] += getattr(other, name)
        for name in ("nan", "positive_infinity", "negative_infinity", "unknown", "nonzero"):
            getattr(self, name)[index] |= getattr(other, name)


@dataclass(frozen=True)
class Rounding:
    """The dtypes of a layer's computation: storage, where sums accumulate, and their unit roundoffs."""

    dtype: str
    accumulation: str | None

    @property
    def storage(self) -> float:
        return tolerances.UNIT_ROUNDOFF[self.dtype]

    @property
    def accumulated(self) -> float:
        return tolerances.accumulation_roundoff(self.dtype, self.accumulation)

    @property
    def tiny(self) -> float:
        return tolerances.SMALLEST_NORMAL[self.dtype]


def finish(sums: Sums, terms: np.ndarray | int, rounding: Rounding, *, stored: bool) -> Quantity:
    """The sum of ``terms`` terms as a :class:`Quantity`: its tolerance (module docstring) and class.

    ``stored``: rounded to the storage dtype (a gradient), else held in the accumulation dtype (``h``).
    """
    n = np.asarray(terms, dtype=np.float64)
    with np.errstate(all="ignore"):
        before = sums.propagated + _gamma(n + 1, rounding.accumulated) * (sums.scale + sums.propagated)
        error = (
            before + _gamma(n + 1, tolerances.U64) * sums.scale + np.where(sums.scale > 0, (n + 3) * rounding.tiny, 0)
        )
        if stored:
            error = error + rounding.storage * (np.abs(sums.value) + before)
            overflow = tolerances.may_overflow(
                rounding.dtype, sums.scale + sums.propagated, int(n.max(initial=1)), accumulation=rounding.accumulation
            )
        else:
            held = rounding.accumulation or rounding.dtype
            overflow = tolerances.may_overflow(held, sums.scale + sums.propagated, int(n.max(initial=1)))
    nan = sums.nan | (sums.positive_infinity & sums.negative_infinity)
    unknown = ~nan & (sums.unknown | overflow)
    return Quantity(sums.value, error, unknown, ~sums.nonzero)


def _gamma(n: np.ndarray, u: float) -> np.ndarray:
    """:func:`~.tolerances.gamma` element-wise: inf where ``n u >= 1``."""
    nu = n * u
    with np.errstate(divide="ignore"):
        return np.where(nu < 1.0, nu / np.maximum(1.0 - nu, 1e-300), np.inf)


@dataclass(frozen=True)
class Gradients:
    """Float64 gradients along given paths: per name (:data:`NAMES`), the values, their tolerances,
    ``S`` (the sum of their terms' magnitudes; integer sums below ``1/u_a`` are exact) and where the
    class is unknown (not compared). ``x`` is (B, d_in); the others have the parameters' shapes."""

    values: dict[str, np.ndarray]
    tolerance: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]
    unknown: dict[str, np.ndarray]


def oracle_gradients(built: Built, nodes: np.ndarray, g64: np.ndarray, accumulation: str | None) -> Gradients:
    """The gradients in float64 along ``nodes`` (B, K, L) for upstream ``g64`` (B, d_out), with tolerances."""
    params = built.oracle_params
    x = built.oracle_x
    rounding = Rounding(built.case.layer.dtype, accumulation)
    rows, trees, levels = nodes.shape
    # Infinities and NaN need every class counted; finite data only the sums, which BLAS may take.
    special = not (np.isfinite(x).all() and np.isfinite(g64).all())
    chunk = max(1, CHUNK_ELEMENTS // max(1, trees * levels * max(params.d_in, params.d_out)))
    dz = Quantity(*(np.empty(nodes.shape, t) for t in (float, float, bool, bool)))
    act = Quantity(*(np.empty(nodes.shape, t) for t in (float, float, bool, bool)))
    grad_x = Sums.zeros((rows, params.d_in))
    for lo in range(0, rows, chunk):
        part = slice(lo, min(rows, lo + chunk))
        chunk_dz, chunk_act = _along_path(x[part], g64[part], nodes[part], built, rounding, special)
        for target, source in ((dz, chunk_dz), (act, chunk_act)):
            for name in ("value", "error", "unknown", "zero"):
                getattr(target, name)[part] = getattr(source, name)
        w_in_rows = params.w_in[np.arange(trees)[None, :, None], nodes[part]].reshape(-1, trees * levels, params.d_in)
        grad_x.add(_weighted_sums(chunk_dz.reshape(w_in_rows.shape[:2]), w_in_rows, special), part)
    values = {"x": finish(grad_x, trees * levels, rounding, stored=True)}
    values.update(_node_gradients(x, g64, nodes, dz, act, built, rounding, special))
    scale = {"x": grad_x.scale}
    for name in ("w_in", "b_in", "w_out"):
        scale[name] = values[name][1]
        values[name] = values[name][0]
    return Gradients(
        {name: q.value for name, q in values.items()},
        {name: q.error for name, q in values.items()},
        scale,
        {name: q.unknown for name, q in values.items()},
    )


def _along_path(
    x: np.ndarray, g: np.ndarray, nodes: np.ndarray, built: Built, rounding: Rounding, special: bool
) -> tuple[Quantity, Quantity]:
    """``dz = h act'(z)`` and ``act(z)`` (B, K, L) of rows ``x`` along ``nodes``."""
    params = built.oracle_params
    name = params.activation
    evaluation = evaluate_path(x, params, nodes)
    z = evaluation.logits
    if special:  # the scale of the finite terms only: an infinite x makes the whole scale infinite
        finite_scale = evaluate_path(np.where(np.isfinite(x), x, 0.0), params, nodes).logit_scale
    else:
        finite_scale = evaluation.logit_scale
    with np.errstate(all="ignore"):
        z_err = tolerances.logit_tolerance(
            rounding.dtype, params.d_in, evaluation.logit_scale, accumulation=rounding.accumulation
        )
        z_unknown = ~np.isnan(z) & tolerances.may_overflow(
            rounding.dtype, finite_scale, params.d_in, accumulation=rounding.accumulation
        )
        z_zero = (evaluation.logit_scale == 0) & ~z_unknown
        at_limit = np.isinf(z) & ~z_unknown  # act and act' are their limits there, exactly
        below = (z == -np.inf) & ~z_unknown
        u_s = rounding.storage
        act_value, slope_value = activate(name, z), derivative(name, z)
        act_err = np.where(at_limit, 0.0, tolerances.ACTIVATION_LIPSCHITZ[name] * z_err + u_s * np.abs(act_value))
        slope_err = np.where(at_limit, 0.0, SLOPE_LIPSCHITZ[name] * z_err + u_s * np.abs(slope_value))
        act_zero = z_zero | (below & (name in ZERO_AT_MINUS_INFINITY))
        slope_zero = below & (name in ZERO_AT_MINUS_INFINITY)
        if name == "relu":
            negative = (z < -z_err) & ~z_unknown
            act_zero |= negative
            slope_zero |= negative | z_zero
            slope_err = np.where((np.abs(z) <= z_err) & ~at_limit, 1.0, slope_err)
        act = Quantity(act_value, act_err, z_unknown.copy(), act_zero)
        slope = Quantity(slope_value, slope_err, z_unknown.copy(), slope_zero)
        w_out_rows = params.w_out[np.arange(params.trees)[None, :, None], nodes]  # (B, K, L, d_out)
        if special:
            h_sums = Sums.of(product(exact(g[:, None, None, :]), exact(w_out_rows)), axis=-1)
        else:
            h_value = np.einsum("bo,bklo->bkl", g, w_out_rows)
            h_scale = np.einsum("bo,bklo->bkl", np.abs(g), np.abs(w_out_rows))
            h_sums = _finite_sums(h_value, h_scale, np.zeros_like(h_value), np.zeros(h_value.shape, bool))
        h = finish(h_sums, params.d_out, rounding, stored=False)
        dz = product(h, slope, rounding=u_s)
        dz_overflow = np.isfinite(dz.value) & tolerances.may_overflow(rounding.dtype, np.abs(dz.value) + dz.error, 1)
        dz = Quantity(dz.value, dz.error, dz.unknown | dz_overflow, dz.zero)
    return dz, act


def _finite_sums(value: np.ndarray, scale: np.ndarray, propagated: np.ndarray, unknown: np.ndarray) -> Sums:
    """Sums of finite terms: none is NaN or infinite, none is known to be zero; ``unknown`` where a
    term's class is (one that may overflow)."""
    flags = np.zeros(value.shape, bool)
    return Sums(value, scale, propagated, flags, flags, flags, np.broadcast_to(unknown, value.shape), ~flags)


def _weighted_sums(weights: Quantity, rows: np.ndarray, special: bool) -> Sums:
    """Sums over visits v of ``weights[..., v] * rows[..., v, :]``: weights (V,) and rows (V, d), or
    weights (B, V) and rows (B, V, d) summed over V for each b."""
    batched = rows.ndim == 3
    if special:
        return Sums.of(product(weights[..., None], exact(rows)), axis=-2)
    magnitudes = np.abs(rows)
    unknown = weights.unknown.any(-1)
    if batched:
        return _finite_sums(
            np.einsum("bv,bvi->bi", weights.value, rows),
            np.einsum("bv,bvi->bi", np.abs(weights.value), magnitudes),
            np.einsum("bv,bvi->bi", weights.error, magnitudes),
            unknown[:, None],
        )
    return _finite_sums(weights.value @ rows, np.abs(weights.value) @ magnitudes, weights.error @ magnitudes, unknown)


def _node_gradients(
    x: np.ndarray,
    g: np.ndarray,
    nodes: np.ndarray,
    dz: Quantity,
    act: Quantity,
    built: Built,
    rounding: Rounding,
    special: bool,
) -> dict[str, tuple[Quantity, np.ndarray]]:
    """The parameter gradients, node by node over the (row, level) visits of each: (Quantity, S)."""
    params = built.oracle_params
    _, trees, levels = nodes.shape
    n_nodes = params.n_nodes
    sums = {
        "w_in": Sums.zeros((trees, n_nodes, params.d_in)),
        "b_in": Sums.zeros((trees, n_nodes)),
        "w_out": Sums.zeros((trees, n_nodes, params.d_out)),
    }
    visits = np.zeros((trees, n_nodes), np.int64)
    for tree in range(trees):
        flat = nodes[:, tree, :].reshape(-1)  # visit v = row * L + level
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=n_nodes)
        visits[tree] = counts
        starts = np.concatenate(([0], np.cumsum(counts)))
        for node in np.flatnonzero(counts):
            chosen = order[starts[node] : starts[node + 1]]
            row, level = chosen // levels, chosen % levels
            node_dz, node_act = dz[row, tree, level], act[row, tree, level]
            sums["w_in"].add(_weighted_sums(node_dz, x[row], special), (tree, node))
            sums["b_in"].add(Sums.of(node_dz, axis=0), (tree, node))
            sums["w_out"].add(_weighted_sums(node_act, g[row], special), (tree, node))
    return {
        name: (finish(s, visits[..., None] if s.value.ndim == 3 else visits, rounding, stored=True), s.scale)
        for name, s in sums.items()
    }
