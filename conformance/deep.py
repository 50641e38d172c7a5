"""Deep layers in every run: fixed cases at depth >= 9 that each property checks before its drawn ones.

The strategies draw a depth-11 layer once in 16 draws, so a backend that is wrong only in its
deep levels (a second kernel past some level, a table that stops at 512 nodes) would pass many
runs. These cases run first, every time, whatever the seed: one per (dtype, array type) the
run covers, each a layer of depth :data:`DEEP_DEPTH` with two trees, so that levels 9 and 10
always exist. The seed still picks their weights and inputs, and the activation rotates through
the backend's, so different runs still see different deep layers.
"""

from __future__ import annotations

from fffcore.conformance.cases import Case, InputSpec, LayerSpec
from fffcore.conformance.target import Target

#: Depth of the fixed deep layers: 2047 nodes a tree, levels 0 to 10.
DEEP_DEPTH = 10
#: Rows of their inputs: enough for most rows to reach a different leaf.
DEEP_ROWS = 40
#: Widths of their layers, cheap at 2 x 2047 nodes (d_in capped for 16-bit accumulation).
DEEP_D_IN = 24
DEEP_D_OUT = 12

#: How each property draws its values (see :data:`fffcore.conformance.properties.PROPERTIES`).
STYLES = ("general", "exact", "specials", "small")


def deep_cases(target: Target, style: str, seed: int) -> list[Case]:
    """The fixed deep cases of a property of ``style``: one per (dtype, array type) of ``target``."""
    if style not in STYLES:
        raise ValueError(f"style: expected one of {STYLES}, got {style!r}")
    found = []
    for index, (dtype, array_type) in enumerate(target.combinations):
        cap = target.max_d_in(dtype)
        layer = LayerSpec(
            d_in=DEEP_D_IN if cap is None else min(DEEP_D_IN, cap),
            d_out=DEEP_D_OUT,
            depth=DEEP_DEPTH,
            trees=2,
            bias=True,
            activation=target.activations[(seed + index) % len(target.activations)],
            dtype=dtype,
            seed=(seed * 7919 + index) % 2**32,
            weights="integer" if style == "exact" else "init",
        )
        values = {"exact": "integers", "specials": "specials"}.get(style, "normal")
        spec = InputSpec(
            leading=(16 if style == "small" else DEEP_ROWS,),
            values=values,
            layout="contiguous",
            dtype=dtype,
            seed=(seed * 104729 + index) % 2**32,
            exponent=1,
            force_ties=style == "exact",
        )
        params_type = "numpy" if "numpy" in target.array_types else array_type
        found.append(Case(layer, spec, array_type, "cpu" if array_type == "numpy" else target.device, params_type))
    return found
