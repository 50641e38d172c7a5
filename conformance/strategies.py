"""Hypothesis strategies for conformance cases.

Plain functions returning strategies, with size caps (a :class:`Scope`) so one
example stays cheap: by default d_in and d_out 1..40 with an occasional 768
(d_in capped for a backend that accumulates in a 16-bit dtype, see
:meth:`Target.max_d_in`), depth 0..7 with an occasional 11, 1..4 trees, up to
three leading dimensions of 0..5 (empty batches included); the thorough scope
reaches further. Every draw shrinks towards a small, boring case: one layer of
depth 0, "normal" values, contiguous input and parameters, the parameters' own dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from fffcore.conformance.adapters import ADAPTERS
from fffcore.conformance.cases import VALUE_STYLES, Case, InputSpec, LayerSpec
from fffcore.conformance.target import Target

#: Largest decade of input magnitudes, and of the weight scale, per dtype: chosen so that
#: sum |x_i w_i| stays far below the dtype's largest finite number (65504 for float16).
INPUT_DECADES = {"float16": 2, "bfloat16": 12, "float32": 12, "float64": 60}
WEIGHT_DECADES = {"float16": 1, "bfloat16": 4, "float32": 4, "float64": 8}

SEEDS = st.integers(0, 2**32 - 1)

#: Batch sizes of the drawn large cases besides the thresholds' neighbours: powers of two from
#: 64 to 8192, one row either side, and sizes that are multiples of no common block size.
LARGE_BATCHES: tuple[int, ...] = tuple(
    sorted({size for k in range(6, 14) for size in (2**k - 1, 2**k, 2**k + 1)} | {1000, 3001, 5003})
)


@dataclass(frozen=True)
class Scope:
    """How far the drawn cases reach.

    Attributes:
        largest_width: d_in and d_out are drawn from 1 to this (besides the rare 768).
        largest_depth: depth is drawn from 0 to this (besides the rare 11).
        largest_trees: trees are drawn from 1 to this.
        rare: one draw in ``rare`` takes the rare large size (width 768, depth 11, a single row).
        largest_axis: each leading dimension of an input is drawn from 1 to this.
        max_rows: at most this many rows in a drawn input (large_batches aside).
        large_batches: the batch sizes large_batches draws from (besides the thresholds' neighbours).
    """

    largest_width: int = 40
    largest_depth: int = 7
    largest_trees: int = 4
    rare: int = 16
    largest_axis: int = 5
    max_rows: int = 125
    large_batches: tuple[int, ...] = LARGE_BATCHES


#: A default run: quick enough for every CI run.
DEFAULT_SCOPE = Scope()

#: ``fff check --thorough``: wider and deeper layers, more trees, the rare sizes one draw in four,
#: batches of up to 1000 rows, and large batches up to 32769 rows.
THOROUGH_SCOPE = Scope(
    largest_width=130,
    largest_depth=10,
    largest_trees=6,
    rare=4,
    largest_axis=12,
    max_rows=1000,
    large_batches=tuple(sorted({*LARGE_BATCHES, 16383, 16384, 16385, 32769})),
)


def _rarely(draw: st.DrawFn, scope: Scope) -> bool:
    # shrinks to 0, i.e. towards "not rare"
    return draw(st.integers(0, scope.rare - 1)) == scope.rare - 1


@st.composite
def layer_specs(
    draw: st.DrawFn, target: Target, dtype: str, *, integer: bool = False, scope: Scope = DEFAULT_SCOPE
) -> LayerSpec:
    """A layer in ``dtype`` with one of the backend's activations.

    d_in is capped at ``target.max_d_in(dtype)`` where the backend accumulates in a
    16-bit dtype: wider layers would have rounding bands that accept nearly anything.
    Integer-valued layers stay at d_in <= 24, where every logit is exact in float16.
    """
    cap = target.max_d_in(dtype)
    largest = 24 if integer else scope.largest_width
    rare_wide = not integer and (cap is None or cap >= 768)
    d_in = (
        768
        if rare_wide and _rarely(draw, scope)
        else draw(st.integers(1, largest if cap is None else min(largest, cap)))
    )
    d_out = 768 if _rarely(draw, scope) else draw(st.integers(1, scope.largest_width))
    depth = 11 if _rarely(draw, scope) else draw(st.integers(0, scope.largest_depth))
    trees = draw(st.integers(1, scope.largest_trees))
    if depth == 11 and max(d_in, d_out) == 768:
        trees = 1  # keep one example below ~25 MB of weights
    return LayerSpec(
        d_in=d_in,
        d_out=d_out,
        depth=depth,
        trees=trees,
        bias=draw(st.booleans()),
        activation=draw(st.sampled_from(target.activations)),
        dtype=dtype,
        seed=draw(SEEDS),
        weights="integer" if integer else "init",
        scale_exponent=_weight_decade(draw, dtype) if not integer else 0,
    )


@st.composite
def input_specs(
    draw: st.DrawFn,
    target: Target,
    layer: LayerSpec,
    array_type: str,
    *,
    values: st.SearchStrategy[str] | None = None,
    max_rows: int = 125,
    force_ties: bool = False,
    upstream: str = "normal",
    scope: Scope = DEFAULT_SCOPE,
) -> InputSpec:
    """An input for ``layer``: leading shape, layout, value style and dtype (``upstream``: how its
    ``grad_y`` is drawn, for the gradient properties)."""
    big = layer.d_in == 768 or layer.d_out == 768 or layer.depth == 11
    if _rarely(draw, scope):
        leading: tuple[int, ...] = ()  # a single row given as a 1-D x
    else:
        axis_sizes = st.integers(1, 3 if big else scope.largest_axis)
        leading = tuple(draw(st.lists(axis_sizes, min_size=1, max_size=2 if big else 3)))
        if _rarely(draw, scope):  # an empty batch, the zero-length axis anywhere
            axis = draw(st.integers(0, len(leading) - 1))
            leading = leading[:axis] + (0,) + leading[axis + 1 :]
    while _product(leading) > max_rows:
        leading = leading[:-1]
    dtypes = target.input_dtypes[array_type]
    dtype = draw(st.sampled_from((layer.dtype, *(d for d in dtypes if d != layer.dtype))))
    decades = min(INPUT_DECADES[layer.dtype], INPUT_DECADES[dtype])
    return InputSpec(
        leading=leading,
        values=draw(values if values is not None else st.sampled_from(VALUE_STYLES)),
        layout=draw(st.sampled_from(ADAPTERS[array_type].layouts)),
        dtype=dtype,
        seed=draw(SEEDS),
        exponent=draw(st.integers(1, decades)),
        force_ties=force_ties,
        upstream=upstream,
    )


@st.composite
def cases(
    draw: st.DrawFn,
    target: Target,
    *,
    values: st.SearchStrategy[str] | None = None,
    integer: bool = False,
    max_rows: int | None = None,
    upstream: str = "normal",
    finite_inputs: bool = False,
    array_type: str | None = None,
    params_array_type: str | None = None,
    scope: Scope = DEFAULT_SCOPE,
) -> Case:
    """A whole case: (dtype, array type) pair, layer, input, parameters' array type and layout.

    ``integer=True`` draws integer-valued weights, inputs and upstream gradients with forced ties
    (see :meth:`fffcore.conformance.cases.Case.build`), so every logit is exact.
    ``max_rows`` caps the rows below the scope's own cap. ``upstream``: how grad_y is drawn;
    ``finite_inputs``: no NaN or infinities in x. ``array_type`` and ``params_array_type`` fix the
    input's and the parameters' array types (the target must test the input's).
    """
    combinations = [c for c in target.combinations if array_type in (None, c[1])]
    dtype, chosen_type = draw(st.sampled_from(combinations))
    layer = draw(layer_specs(target, dtype, integer=integer, scope=scope))
    if integer:
        values, upstream = st.just("integers"), "integers"
    elif finite_inputs:
        values = st.sampled_from(tuple(style for style in VALUE_STYLES if style != "specials"))
    rows = scope.max_rows if max_rows is None else min(max_rows, scope.max_rows)
    spec = draw(
        input_specs(
            target,
            layer,
            chosen_type,
            values=values,
            max_rows=rows,
            force_ties=integer,
            upstream=upstream,
            scope=scope,
        )
    )
    return _case(draw, target, layer, spec, chosen_type, params_array_type)


def _case(
    draw: st.DrawFn,
    target: Target,
    layer: LayerSpec,
    spec: InputSpec,
    array_type: str,
    params_array_type: str | None = None,
) -> Case:
    """The case of ``layer`` and ``spec``, with its parameters' array type (unless given) and layout drawn."""
    kinds = (params_array_type,) if params_array_type else target.params_array_types(layer.dtype, array_type)
    params_type = draw(st.sampled_from(kinds))
    params_layout = draw(st.sampled_from(ADAPTERS[params_type].layouts))
    device = "cpu" if array_type == "numpy" else target.device
    return Case(layer, spec, array_type, device, params_type, params_layout)


def _weight_decade(draw: st.DrawFn, dtype: str) -> int:
    """Mostly 0 (UltraFastBERT's scale, where activations are neither linear nor saturated); a quarter rescaled."""
    if draw(st.integers(0, 3)) < 3:
        return 0
    return draw(st.integers(-WEIGHT_DECADES[dtype], WEIGHT_DECADES[dtype]))


def _product(shape: tuple[int, ...]) -> int:
    result = 1
    for size in shape:
        result *= size
    return result


@st.composite
def large_cases(draw: st.DrawFn, target: Target, scope: Scope = DEFAULT_SCOPE) -> Case:
    """A batch of the scope's large sizes (63 to 8193 rows by default) or next to one of the backend's
    thresholds, half of them on the paper's layer (width 768, depth 11, one tree), the rest on a narrow
    layer of depth 9 and two trees."""
    dtype, array_type = draw(st.sampled_from(target.combinations))
    near = tuple(size for t in target.batch_thresholds for size in (t - 1, t, t + 1) if size >= 1)
    batch = draw(st.sampled_from(tuple(sorted(set(scope.large_batches) | set(near)))))
    cap = target.max_d_in(dtype)
    paper = (cap is None or cap >= 768) and draw(st.booleans())
    layer = LayerSpec(
        d_in=768 if paper else min(24, cap or 24),
        d_out=768 if paper else 12,
        depth=11 if paper else 9,
        trees=1 if paper else 2,
        bias=draw(st.booleans()),
        activation=draw(st.sampled_from(target.activations)),
        dtype=dtype,
        seed=draw(SEEDS),
    )
    spec = InputSpec(
        leading=(batch,),
        values="normal",
        layout=draw(st.sampled_from(ADAPTERS[array_type].layouts)),
        dtype=dtype,
        seed=draw(SEEDS),
        exponent=1,
    )
    return _case(draw, target, layer, spec, array_type)
