"""Fixed cases, checked after the drawn ones: deep layers for every property and batches around each
declared threshold in every run; in a thorough run also every dtype with every activation.

The strategies draw a depth-11 layer once in 16 draws, so a backend that is wrong only in its
deep levels (a second kernel past some level, a table that stops at 512 nodes) would pass many
runs. These cases run first, every time, whatever the seed: one per (dtype, array type) the
run covers, each a layer of depth :data:`DEEP_DEPTH` with two trees, so that levels 9 and 10
always exist. The seed still picks their weights and inputs, and the activation rotates through
the backend's, so different runs still see different deep layers.

The property ``large_batches`` also gets, in every run, batches of one row below, at and one
row above each of the backend's ``batch_thresholds`` (:func:`threshold_cases`), where a backend
switches kernels: a backend right below a threshold and wrong above it fails every run.

The large cases (:func:`large_fixed_cases`: the paper's layer on thousands of rows and a narrow layer
on 8193) come in the (dtype, array type) and the input layout the seed picks, so that runs with
different seeds rotate through them. For the gradients the paper's layer has at least 4097 rows,
beyond every point where a built-in backend's backward changes how it works (numba's stages and
its split over threads, torch's blocks of rows: 910 rows of the paper's layer in float32).

The gradient properties' deep cases come twice per (dtype, array type), with and without bias, and
their inputs in the layout the seed picks.

A thorough run (``fff check --thorough``) adds :func:`coverage_cases`: every activation with every
(dtype, array type), inputs and parameters in each layout their libraries offer, and the large
cases in every (dtype, array type) rather than one.
"""

from __future__ import annotations

from collections.abc import Sequence

from fffcore.conformance.adapters import ADAPTERS
from fffcore.conformance.cases import Case, InputSpec, LayerSpec
from fffcore.conformance.target import Target

#: Depth of the fixed deep layers: 2047 nodes a tree, levels 0 to 10.
DEEP_DEPTH = 10
#: Rows of their inputs: enough for most rows to reach a different leaf.
DEEP_ROWS = 40
#: Widths of their layers, cheap at 2 x 2047 nodes (d_in capped for 16-bit accumulation).
DEEP_D_IN = 24
DEEP_D_OUT = 12

#: How each property draws its values (see :data:`fffcore.conformance.properties.PROPERTIES`):
#: "upstream" holds special values in grad_y, "torch" gives torch tensors only (x and parameters).
STYLES = ("general", "exact", "specials", "upstream", "small", "large", "torch")

#: Layer of the threshold cases: deep (levels 0 to 9) and narrow, so that a thousand rows stay cheap.
THRESHOLD_LAYER = {"d_in": 24, "d_out": 12, "depth": 9, "trees": 2}

#: Layer and rows of the coverage cases: odd widths (no vector width divides them), three trees.
COVERAGE_LAYER = {"d_in": 33, "d_out": 17, "depth": 6, "trees": 3}
COVERAGE_ROWS = 50


def fixed_cases(target: Target, style: str, seed: int, *, thorough: bool = False, backward: bool = False) -> list[Case]:
    """Every fixed case of a property of ``style``, in the order they are checked (``backward``: a
    gradient property's)."""
    found = deep_cases(target, style, seed, backward=backward)
    if thorough:
        combinations: Sequence[int] = range(len(target.combinations))
    else:
        combinations = (seed % len(target.combinations),)
    if style == "large":
        found += threshold_cases(target, target.batch_thresholds, seed)
        found += [case for index in combinations for case in large_fixed_cases(target, seed, index, backward=backward)]
    elif thorough:
        found += coverage_cases(target, style, seed)
    return found


def _values(style: str) -> str:
    return {"exact": "integers", "specials": "specials"}.get(style, "normal")


def _upstream(style: str) -> str:
    return {"exact": "integers", "upstream": "specials"}.get(style, "normal")


def _combinations(target: Target, style: str) -> list[tuple[int, tuple[str, str]]]:
    """The (index, (dtype, array type)) pairs a style's fixed cases cover: torch's only for "torch"."""
    return [(i, c) for i, c in enumerate(target.combinations) if style != "torch" or c[1] == "torch"]


def deep_cases(target: Target, style: str, seed: int, *, backward: bool = False) -> list[Case]:
    """The fixed deep cases of a property of ``style``: one per (dtype, array type) of ``target``, and
    for a gradient property (``backward``) one with bias and one without, the input in a layout the
    seed picks."""
    if style not in STYLES:
        raise ValueError(f"style: expected one of {STYLES}, got {style!r}")
    found = []
    for index, (dtype, array_type) in _combinations(target, style):
        cap = target.max_d_in(dtype)
        layouts = ADAPTERS[array_type].layouts
        for bias in (True, False) if backward else (True,):
            layer = LayerSpec(
                d_in=DEEP_D_IN if cap is None else min(DEEP_D_IN, cap),
                d_out=DEEP_D_OUT,
                depth=DEEP_DEPTH,
                trees=2,
                bias=bias,
                activation=target.activations[(seed + index + (not bias)) % len(target.activations)],
                dtype=dtype,
                seed=(seed * 7919 + index) % 2**32,
                weights="integer" if style == "exact" else "init",
            )
            spec = InputSpec(
                leading=(16 if style in ("small", "torch") else DEEP_ROWS,),
                values=_values(style),
                layout=layouts[(seed + index + (not bias)) % len(layouts)] if backward else "contiguous",
                dtype=dtype,
                seed=(seed * 104729 + index) % 2**32,
                exponent=1,
                force_ties=style == "exact",
                upstream=_upstream(style),
            )
            params_type = "torch" if style == "torch" else None
            found.append(_case(target, layer, spec, array_type, seed + index + (not bias), params_type))
    return found


def coverage_cases(target: Target, style: str, seed: int) -> list[Case]:
    """One case per activation per (dtype, array type); bias, the input's layout and the parameters'
    layout rotate, so every layout each library offers comes up."""
    found = []
    for index, (dtype, array_type) in _combinations(target, style):
        cap = target.max_d_in(dtype)
        for number, activation in enumerate(target.activations):
            turn = seed + index + number
            widest = 24 if style == "exact" else COVERAGE_LAYER["d_in"]  # integer logits exact in bfloat16
            layer = LayerSpec(
                d_in=widest if cap is None else min(widest, cap),
                d_out=COVERAGE_LAYER["d_out"],
                depth=COVERAGE_LAYER["depth"],
                trees=COVERAGE_LAYER["trees"],
                bias=turn % 2 == 0,
                activation=activation,
                dtype=dtype,
                seed=(seed * 6007 + index * 97 + number) % 2**32,
                weights="integer" if style == "exact" else "init",
            )
            layouts = ADAPTERS[array_type].layouts
            spec = InputSpec(
                leading=(16 if style in ("small", "torch") else COVERAGE_ROWS,),
                values=_values(style),
                layout=layouts[turn % len(layouts)],
                dtype=dtype,
                seed=(seed * 7901 + index * 89 + number) % 2**32,
                exponent=1,
                force_ties=style == "exact",
                upstream=_upstream(style),
            )
            params_type = "torch" if style == "torch" else None
            found.append(_case(target, layer, spec, array_type, turn + number, params_type))
    return found


def threshold_cases(target: Target, thresholds: tuple[int, ...], seed: int) -> list[Case]:
    """Batches of ``t - 1``, ``t`` and ``t + 1`` rows for each threshold ``t``, for each (dtype, array type)."""
    sizes = sorted({size for t in thresholds for size in (t - 1, t, t + 1) if size >= 1})
    found = []
    for index, (dtype, array_type) in enumerate(target.combinations):
        cap = target.max_d_in(dtype)
        d_in = THRESHOLD_LAYER["d_in"] if cap is None else min(THRESHOLD_LAYER["d_in"], cap)
        for size in sizes:
            layer = LayerSpec(
                d_in=d_in,
                d_out=THRESHOLD_LAYER["d_out"],
                depth=THRESHOLD_LAYER["depth"],
                trees=THRESHOLD_LAYER["trees"],
                activation=target.activations[(seed + size) % len(target.activations)],
                dtype=dtype,
                seed=(seed * 31 + size * 7 + index) % 2**32,
            )
            spec = InputSpec(
                leading=(size,), values="normal", dtype=dtype, seed=(seed + size + index) % 2**32, exponent=1
            )
            found.append(_case(target, layer, spec, array_type, seed + size))
    return found


def _case(
    target: Target, layer: LayerSpec, spec: InputSpec, array_type: str, turn: int, params_type: str | None = None
) -> Case:
    """The case with the ``turn``-th of the parameters' array types the strategies offer (unless given),
    in the ``turn``-th of the layouts its library offers (so runs with different seeds see different ones)."""
    kinds = (params_type,) if params_type else target.params_array_types(layer.dtype, array_type)
    params_type = kinds[turn % len(kinds)]
    layouts = ADAPTERS[params_type].layouts
    device = "cpu" if array_type == "numpy" else target.device
    return Case(layer, spec, array_type, device, params_type, layouts[turn % len(layouts)])


#: Sizes of the fixed large cases of the paper's layer, one chosen by the run's seed: none a multiple of
#: 64 or of 3. The gradients' are all beyond 4096 rows.
LARGE_FIXED_BATCHES = (4097, 8193, 6145, 2051)
GRADIENT_LARGE_BATCHES = (4097, 5003, 6145, 4609)


def large_fixed_cases(target: Target, seed: int, index: int = 0, *, backward: bool = False) -> list[Case]:
    """The paper's layer (width 768, depth 11, one tree) on a few thousand rows, and a narrow layer on
    8193, both in the ``index``-th (dtype, array type) of the target, the input in the layout the seed
    picks (a default run takes the combination the seed picks; the drawn large cases cover the rest,
    but a handful of draws may all be small)."""
    dtype, array_type = target.combinations[index]
    cap = target.max_d_in(dtype)
    sizes = GRADIENT_LARGE_BATCHES if backward else LARGE_FIXED_BATCHES
    batch = sizes[seed % len(sizes)]
    layouts = ADAPTERS[array_type].layouts
    layers = [
        LayerSpec(
            d_in=min(24, cap or 24),
            d_out=12,
            depth=9,
            trees=2,
            bias=seed % 2 == 0,
            dtype=dtype,
            seed=(seed + 1) % 2**32,
        ),
    ]
    if cap is None or cap >= 768:
        layers.insert(0, LayerSpec(d_in=768, d_out=768, depth=11, trees=1, dtype=dtype, seed=seed % 2**32))
    batches = [batch, 8193] if len(layers) == 2 else [8193]
    return [
        _case(
            target,
            layer,
            InputSpec(
                leading=(size,),
                values="normal",
                layout=layouts[(seed + number) % len(layouts)],
                dtype=dtype,
                seed=(seed + size) % 2**32,
                exponent=1,
            ),
            array_type,
            seed + size,
        )
        for number, (layer, size) in enumerate(zip(layers, batches, strict=True))
    ]
