"""The one table of benchmark cases: shapes, implementations, and their pairs.

Both the pytest-benchmark suite (``benchmarks/test_suite/test_bench_fff.py``) and
``fff compare`` draw their cases from here, so the two always measure the
same things. Everything is named by plain strings: a shape has an ``id``
(``"d768-D11-K1-B128-float32"``), an implementation an id such as
``"fff:numba"``, ``"dense:torch:3072"`` or ``"paper:torch"``, and a case is
the pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fffcore.spec import node_count

#: The paper's setting: BERT-base feedforward width, UltraFastBERT-1x11.
PAPER_WIDTH = 768
PAPER_DEPTH = 11
#: Hidden widths of the dense baselines at the paper's setting: BERT-base's
#: feedforward (3072) and a dense layer with as many neurons as the tree (4095).
PAPER_DENSE_HIDDEN = (3072, node_count(PAPER_DEPTH))
PAPER_BATCHES = (1, 128, 4096, 16384)

#: UltraFastBERT's K x D family (trees x depth), from 3072x0 to 1x11: about
#: 3072 to 4608 neurons each, of which K * (D + 1) are visited per row.
TREES_BY_DEPTH = (
    (3072, 0),
    (1536, 1),
    (512, 2),
    (256, 3),
    (128, 4),
    (64, 5),
    (32, 6),
    (16, 7),
    (8, 8),
    (4, 9),
    (2, 10),
    (1, 11),
)
SWEEP_DEPTHS = tuple(range(PAPER_DEPTH + 1))
SWEEP_BATCH = 256

#: Shape families, in the order they are reported.
FAMILIES = ("paper", "depth", "trees", "tiny")

#: Array libraries of the dense baselines; each is an implementation id ``dense:<library>:<hidden>``.
#: ``<library>`` runs on every thread of the run, ``<library>-1thread`` on one: at small batches
#: one thread can be the faster (no fork and join), and "best dense" is the fastest of all four.
DENSE_LIBRARIES = ("numpy", "torch", "numpy-1thread", "torch-1thread")
#: The suffix of a dense library id that runs it on one thread.
ONE_THREAD = "-1thread"
#: The paper's PyTorch FFF (per-level index_select + bmm), see :mod:`fffcore.benchmarks.baselines`.
PAPER_FFF = "paper:torch"


@dataclass(frozen=True)
class Shape:
    """One benchmarked layer and input size.

    Attributes:
        family: which table the shape belongs to (one of :data:`FAMILIES`).
        d_in, d_out: layer widths.
        depth, trees: the FFF layer's tree depth D and tree count K.
        batch: rows per call.
        dense_hidden: hidden widths of the dense baselines measured beside it.
        dtype: the parameters' dtype (inputs are made in it too).
    """

    family: str
    d_in: int
    d_out: int
    depth: int
    trees: int
    batch: int
    dense_hidden: tuple[int, ...]
    dtype: str = "float32"

    @property
    def id(self) -> str:
        return f"d{self.d_in}-D{self.depth}-K{self.trees}-B{self.batch}-{self.dtype}"

    @property
    def group(self) -> str:
        """The pytest-benchmark group: numbers padded so that groups sort by batch, depth and trees."""
        return (
            f"{self.family} d{self.d_in}->{self.d_out} D={self.depth:2d} K={self.trees:4d} "
            f"B={self.batch:5d} {self.dtype}"
        )

    @property
    def neurons(self) -> int:
        """Neurons in the FFF layer: K * (2**(D+1) - 1)."""
        return self.trees * node_count(self.depth)

    @property
    def visited(self) -> int:
        """Neurons each row visits: K * (D + 1)."""
        return self.trees * (self.depth + 1)

    def limit(self, dense_hidden: int) -> float:
        """The theoretical speedup over a dense layer of ``dense_hidden`` neurons: dense neurons / visited neurons."""
        return dense_hidden / self.visited

    def describe(self) -> str:
        width = f"d_in=d_out={self.d_in}" if self.d_in == self.d_out else f"d_in={self.d_in}, d_out={self.d_out}"
        trees = "1 tree" if self.trees == 1 else f"{self.trees} trees"
        return (
            f"{self.family}: {width}, depth {self.depth}, {trees} ({self.visited} of {self.neurons} neurons visited "
            f"per row), {self.dtype}, batch {self.batch}"
        )


@dataclass(frozen=True)
class Case:
    """One shape and one implementation id: a row of ``fff compare``, a test of the suite."""

    shape: Shape
    implementation: str

    @property
    def id(self) -> str:
        return f"{self.shape.family}/{self.shape.id}/{self.implementation}"


def paper_shapes(batches: Sequence[int] = PAPER_BATCHES, dtype: str = "float32") -> list[Shape]:
    """The paper's setting (width 768, depth 11, 1 tree) at each batch size."""
    return [
        Shape("paper", PAPER_WIDTH, PAPER_WIDTH, PAPER_DEPTH, 1, int(b), PAPER_DENSE_HIDDEN, dtype) for b in batches
    ]


def depth_shapes(batch: int = SWEEP_BATCH, depths: Sequence[int] = SWEEP_DEPTHS, dtype: str = "float32") -> list[Shape]:
    """Width 768, one tree, depth 0..11; each beside a dense layer of equal width (2**(D+1) - 1 neurons)."""
    return [
        Shape("depth", PAPER_WIDTH, PAPER_WIDTH, int(d), 1, int(batch), (node_count(int(d)),), dtype) for d in depths
    ]


def trees_shapes(batch: int = SWEEP_BATCH, dtype: str = "float32") -> list[Shape]:
    """UltraFastBERT's K x D family at width 768, each beside BERT-base's dense feedforward (3072)."""
    return [
        Shape("trees", PAPER_WIDTH, PAPER_WIDTH, depth, trees, int(batch), (PAPER_DENSE_HIDDEN[0],), dtype)
        for trees, depth in TREES_BY_DEPTH
    ]


def tiny_shapes(dtype: str = "float32") -> list[Shape]:
    """A shape small enough for a smoke test (every implementation runs in milliseconds)."""
    return [Shape("tiny", 16, 8, 3, 2, 8, (2 * node_count(3),), dtype)]


def shapes_for(
    families: Iterable[str],
    *,
    batches: Sequence[int] = PAPER_BATCHES,
    sweep_batch: int = SWEEP_BATCH,
    dtype: str = "float32",
) -> list[Shape]:
    """The shapes of the named families, in :data:`FAMILIES` order; ``batches`` applies to ``paper``."""
    wanted = list(dict.fromkeys(families))
    unknown = [f for f in wanted if f not in FAMILIES]
    if unknown:
        raise ValueError(f"shape families: expected names from {FAMILIES}, got unknown {unknown}")
    makers = {
        "paper": lambda: paper_shapes(batches, dtype),
        "depth": lambda: depth_shapes(sweep_batch, dtype=dtype),
        "trees": lambda: trees_shapes(sweep_batch, dtype),
        "tiny": lambda: tiny_shapes(dtype),
    }
    return [shape for family in FAMILIES if family in wanted for shape in makers[family]()]


def backend_names() -> list[str]:
    """Every registered backend, available or not (unavailable ones become skipped cases with their reason)."""
    from fffcore import list_backends

    return [info.name for info in list_backends() if not info.broken]


def implementations_for(shape: Shape, backends: Sequence[str] | None = None) -> list[str]:
    """Implementation ids measured at ``shape``: every FFF backend, the dense baselines, the paper's FFF."""
    names = backend_names() if backends is None else list(backends)
    ids = [f"fff:{name}" for name in names]
    ids += [f"dense:{library}:{hidden}" for hidden in shape.dense_hidden for library in DENSE_LIBRARIES]
    ids.append(PAPER_FFF)
    return ids


def cases_for(shapes: Iterable[Shape], backends: Sequence[str] | None = None) -> list[Case]:
    """Every (shape, implementation) pair, shape by shape."""
    names = backend_names() if backends is None else list(backends)
    return [Case(shape, implementation) for shape in shapes for implementation in implementations_for(shape, names)]


def select_implementations(cases: Iterable[Case], patterns: Sequence[str] | None) -> list[Case]:
    """Cases whose implementation id equals a pattern or starts with ``pattern:`` (``fff`` keeps every backend).

    None or an empty list keeps everything.
    """
    if not patterns:
        return list(cases)
    return [
        case
        for case in cases
        if any(case.implementation == p or case.implementation.startswith(p + ":") for p in patterns)
    ]
