"""End-to-end model benchmark: a BERT-base-shaped model with dense feedforward blocks against FFF blocks.

    python -m benchmarks.studies.model                        # 12 layers, width 768, depth 11, batches 1,8, seq 128
    python -m benchmarks.studies.model --no-reference --json model.json
    python -m benchmarks.studies.model --layers 2 --width 32 --heads 2 --intermediate 128 --depth 3 --seq 8

Builds a BERT model from ``transformers.BertConfig`` (random weights from a fixed
seed, eval mode, nothing downloaded) and, sharing its attention and embedding
weights, variants of it: every feedforward block replaced by an FFF of one tree
(width in and out = hidden width, gelu) on each CPU backend and on the automatic
choice, and the model with the feedforward removed altogether (the Amdahl bound).
Each FFF block's output is checked, untimed, against its own dense masked
evaluation in float64; then whole-model forward passes are timed round-robin.
See docs/model-benchmark.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fffcore
from fffcore.benchmarks.timing import WALL, seconds_per_call
from fffcore.params import FFFParams

JSON_FORMAT = "fffcore-model-benchmark/1"
INSTALL_HINT = "pip install 'fffcore[model]'"
#: CPU backends timed by default, when available; "reference" is the slow NumPy one.
DEFAULT_BACKENDS = ("numba", "torch", "reference")
DENSE = "dense"
AUTO = "fff:auto"
WITHOUT_FEEDFORWARD = "no-feedforward"
#: Rows evaluated in float64 at a time in the check: the (rows, K, D+1, d_in) gathers stay tens of megabytes.
CHECK_CHUNK_ROWS = 256


def require_transformers() -> Any:
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(f"the model benchmark needs transformers, which is not installed: {INSTALL_HINT}") from error
    return transformers


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What to build and how to time it (the command's options, validated)."""

    layers: int = 12
    width: int = 768
    heads: int = 12
    intermediate: int = 3072
    depth: int = 11
    seq: int = 128
    batches: tuple[int, ...] = (1, 8)
    rounds: int = 10
    warmup: int = 2
    reference_rounds: int = 3
    pool: int = 8
    seed: int = 0
    backends: tuple[str, ...] = DEFAULT_BACKENDS


def parse_arguments(argv: Sequence[str] | None) -> tuple[Settings, str | None]:
    """Settings and the JSON path from the command line; bad values exit with status 2 (argparse's way)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (default 12)")
    parser.add_argument("--width", type=int, default=768, help="hidden width, also the FFF's width (default 768)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default width/64, at least 1)")
    parser.add_argument("--intermediate", type=int, default=None, help="dense feedforward width (default 4*width)")
    parser.add_argument("--depth", type=int, default=11, help="FFF tree depth (default 11: 4095 neurons, 12 visited)")
    parser.add_argument(
        "--rounds", type=int, default=10, help="timed rounds, one call of each variant per round (default 10)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed rounds first: numba compilation, caches (default 2)"
    )
    parser.add_argument(
        "--reference-rounds", type=int, default=3, help="timed rounds of the slow reference backend (default 3)"
    )
    parser.add_argument("--no-reference", action="store_true", help="leave out the reference backend")
    parser.add_argument(
        "--backends", default=",".join(DEFAULT_BACKENDS), help="FFF backends to time, when available (comma-separated)"
    )
    parser.add_argument("--pool", type=int, default=8, help="pre-built random inputs per batch size (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's weights and the inputs (default 0)")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    arguments = parser.parse_args(argv)

    for option in ("seq", "layers", "width", "depth", "rounds", "reference_rounds", "pool"):
        if getattr(arguments, option) < (0 if option == "depth" else 1):
            parser.error(f"--{option.replace('_', '-')}: expected a positive integer, got {getattr(arguments, option)}")
    if arguments.warmup < 0:
        parser.error(f"--warmup: expected an integer >= 0, got {arguments.warmup}")
    heads = arguments.heads if arguments.heads is not None else max(1, arguments.width // 64)
    if heads < 1 or arguments.width % heads:
        parser.error(f"--heads: {heads} heads do not divide the width {arguments.width}")
    try:
        batches = tuple(int(part) for part in arguments.batches.split(",") if part.strip())
    except ValueError:
        parser.error(f"--batches: expected comma-separated integers, got {arguments.batches!r}")
    if not batches or min(batches) < 1:
        parser.error(f"--batches: expected positive integers, got {arguments.batches!r}")
    backends = tuple(name.strip() for name in arguments.backends.split(",") if name.strip())
    if arguments.no_reference:
        backends = tuple(name for name in backends if name != "reference")
    settings = Settings(
        layers=arguments.layers,
        width=arguments.width,
        heads=heads,
        intermediate=arguments.intermediate or 4 * arguments.width,
        depth=arguments.depth,
        seq=arguments.seq,
        batches=batches,
        rounds=arguments.rounds,
        warmup=arguments.warmup,
        reference_rounds=min(arguments.reference_rounds, arguments.rounds),
        pool=arguments.pool,
        seed=arguments.seed,
        backends=backends,
    )
    return settings, arguments.json


# --------------------------------------------------------------------------- models


def build_dense_model(settings: Settings) -> Any:
    """A ``transformers.BertModel`` of the settings' shape, float32, eval mode, random weights from ``seed``.

    Built from a config (BertConfig's defaults for everything not set here), never downloaded.
    """
    transformers = require_transformers()
    import torch

    config = transformers.BertConfig(
        num_hidden_layers=settings.layers,
        hidden_size=settings.width,
        num_attention_heads=settings.heads,
        intermediate_size=settings.intermediate,
        max_position_embeddings=max(512, settings.seq),
    )
    with torch.random.fork_rng(devices=[]):  # a fixed seed without disturbing the caller's generator
        torch.manual_seed(settings.seed)
        model = transformers.BertModel(config)
    return model.float().eval()


def encoder_layers(model: Any) -> list[Any]:
    """The model's ``BertLayer`` modules, each checked to have ``intermediate`` and ``output.dense``.

    transformers 4.x and 5.x both keep them in ``model.encoder.layer`` and split the feedforward
    into ``intermediate`` (dense + GELU) and ``output`` (dense, dropout, LayerNorm(hidden + residual));
    ``encoder.layers`` is accepted too, should a later version rename the list.
    """
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        layers = getattr(encoder, "layers", None)
    if layers is None:
        raise TypeError(f"model: {type(model).__name__} has no encoder.layer list (transformers changed BertModel?)")
    for index, layer in enumerate(layers):
        if not hasattr(layer, "intermediate") or not hasattr(getattr(layer, "output", None), "dense"):
            raise TypeError(f"model: encoder layer {index} has no intermediate / output.dense (transformers changed?)")
    return list(layers)


def layer_params(settings: Settings) -> list[FFFParams]:
    """One float32 FFF per encoder layer: 1 tree, width in and out = hidden width, gelu, seeded by the layer index."""
    return [
        FFFParams.random(settings.width, settings.width, settings.depth, seed=index) for index in range(settings.layers)
    ]


def make_fff_block(params: FFFParams, backend: str | None) -> Any:
    """The module that replaces ``layer.intermediate``: (..., width) float32 in, (..., width) float32 out."""
    from fffcore.torch import FFFInference

    return FFFInference(params, backend=backend)


def share_weights_copy(model: Any) -> Any:
    """A structural copy of ``model`` whose parameters and buffers are the original tensors (no extra memory)."""
    memo = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def with_fff(model: Any, params: Sequence[FFFParams], backend: str | None) -> Any:
    """``model`` with every feedforward block an FFF on ``backend`` (None: automatic choice).

    BERT's dropout, residual and LayerNorm stay: ``intermediate`` becomes the FFF (width -> width)
    and ``output.dense`` the identity, so ``output`` computes LayerNorm(FFF(h) + h).
    """
    import torch

    swapped = share_weights_copy(model)
    for layer, layer_fff in zip(encoder_layers(swapped), params, strict=True):
        layer.intermediate = make_fff_block(layer_fff, backend)
        layer.output.dense = torch.nn.Identity()
    return swapped.eval()


def without_feedforward(model: Any) -> Any:
    """``model`` with the feedforward removed: ``output`` computes LayerNorm(h + h), the Amdahl bound's model."""
    import torch

    stripped = share_weights_copy(model)
    for layer in encoder_layers(stripped):
        layer.intermediate = torch.nn.Identity()
        layer.output.dense = torch.nn.Identity()
    return stripped.eval()


def available_fff_backends(requested: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The requested backends that run here on the CPU, in order, and the reasons for the others."""
    rows = {row.name: row for row in fffcore.list_backends()}
    usable, skipped = [], {}
    for name in requested:
        row = rows.get(name)
        if row is None:
            skipped[name] = "unknown backend"
        elif not row.available:
            skipped[name] = f"unavailable: {row.reason}"
        elif "cpu" not in row.devices:
            skipped[name] = "does not compute on the CPU"
        else:
            usable.append(name)
    return usable, skipped


def make_input_pool(vocab_size: int, batch: int, seq: int, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` model inputs: ``input_ids`` (batch, seq) int64 uniform random tokens, ``attention_mask`` all ones."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + batch)
    return [
        {
            "input_ids": torch.randint(0, vocab_size, (batch, seq), generator=generator),
            "attention_mask": torch.ones((batch, seq), dtype=torch.int64),
        }
        for _ in range(count)
    ]


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class BlockCheck:
    """The verdict on one FFF block's output in one forward pass.

    Attributes:
        layer: the encoder layer's index.
        ok: every checked row within the bounds.
        detail: the first failure with its numbers, or empty.
        rows: rows the block received.
        near_tie_rows: rows whose float64 path has a branch inside the float32 rounding band; each was
            checked against every valid path and had to match one.
        other_branch_rows: of those, rows that matched only a path other than the float64 one.
        unchecked_rows: near-tie rows with too many valid paths to enumerate (not checked).
        worst: the largest |error| / bound over the rows compared with the masked evaluation.
    """

    layer: int
    ok: bool
    detail: str
    rows: int
    near_tie_rows: int = 0
    other_branch_rows: int = 0
    unchecked_rows: int = 0
    worst: float = 0.0


@dataclass
class VariantCheck:
    """Every block of one FFF variant, checked in one forward pass at one batch size."""

    variant: str
    batch: int
    blocks: list[BlockCheck] = field(default_factory=list)
    resolved_backend: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.blocks) and all(block.ok for block in self.blocks)

    def summary(self) -> str:
        """One line: the first failure, or what was checked."""
        failed = [block for block in self.blocks if not block.ok]
        if failed:
            return f"layer {failed[0].layer}: {failed[0].detail}"
        rows = sum(block.rows for block in self.blocks)
        ties = sum(block.near_tie_rows for block in self.blocks)
        other = sum(block.other_branch_rows for block in self.blocks)
        unchecked = sum(block.unchecked_rows for block in self.blocks)
        worst = max((block.worst for block in self.blocks), default=0.0)
        line = f"{len(self.blocks)} blocks, {rows} rows within the float32 bounds (worst {worst:.2g} of the bound)"
        if ties:
            line += f"; {ties} near-tie rows matched a valid path ({other} the other branch)"
        if unchecked:
            line += f"; {unchecked} rows with too many near ties not checked"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "batch": self.batch,
            "ok": self.ok,
            "summary": self.summary(),
            "resolved_backend": self.resolved_backend,
            "blocks": [asdict(block) for block in self.blocks],
        }


def masked_module(params: FFFParams) -> Any:
    """UltraFastBERT's masking FFF (benchmarks/masking.py) holding ``params``' weights, in float64.

    Its forward is the dense masked evaluation: all K*N logits in one product, a 0/1 mask of the
    visited nodes, act(logits) * mask, then the dense output product.
    """
    from fffcore.benchmarks.masking import make_masking_fff_module
    from fffcore.ultrafastbert import state_dict_from_params

    module = make_masking_fff_module(
        params.d_in, params.d_out, params.depth, params.trees, activation=params.activation
    )
    module.load_state_dict(state_dict_from_params(params, as_torch=True))
    return module.double().eval()


def check_block(
    layer: int,
    x: np.ndarray,
    params: FFFParams,
    output: np.ndarray,
    masked: Any,
    accumulation: str | None = None,
) -> BlockCheck:
    """Check one block's float32 output against its dense masked evaluation in float64.

    Args:
        layer: the encoder layer's index (for messages).
        x: (B, d_in) float32, the rows the block received.
        params: the block's layer, float32 numpy.
        output: (B, d_out) float32, what the block returned.
        masked: :func:`masked_module` of ``params`` (float64).
        accumulation: the backend's accumulation dtype when wider than float32 (None: float32).

    Rows are checked in chunks of :data:`CHECK_CHUNK_ROWS`; a failure names the row in the whole input.
    """
    rows = x.shape[0]
    if tuple(output.shape) != (rows, params.d_out):
        return BlockCheck(layer, False, f"output shape {tuple(output.shape)}, expected {(rows, params.d_out)}", rows)
    wide = params.astype(np.float64)
    totals = {"near_tie_rows": 0, "other_branch_rows": 0, "unchecked_rows": 0}
    worst = 0.0
    for start in range(0, rows, CHECK_CHUNK_ROWS):
        stop = min(start + CHECK_CHUNK_ROWS, rows)
        part = _check_chunk(layer, x[start:stop], wide, output[start:stop], masked, accumulation, start)
        if not part.ok:
            return BlockCheck(layer, False, part.detail, rows, worst=worst, **totals)
        for key in totals:
            totals[key] += getattr(part, key)
        worst = max(worst, part.worst)
    return BlockCheck(layer, True, "", rows, worst=worst, **totals)


def _check_chunk(
    layer: int,
    x: np.ndarray,
    wide: FFFParams,
    output: np.ndarray,
    masked: Any,
    accumulation: str | None,
    first_row: int,
) -> BlockCheck:
    """:func:`check_block` on rows ``first_row`` onwards; ``wide``: the layer's parameters in float64."""
    import torch

    from fffcore.conformance import tolerances
    from fffcore.conformance.checks import mismatches, oracle_along
    from fffcore.reference.oracle import oracle_cmm

    x64 = x.astype(np.float32).astype(np.float64)  # what the block computed on, exactly
    with torch.inference_mode():
        expected = masked(torch.from_numpy(x64)).numpy()  # (B, d_out): the dense masked evaluation
    _, nodes64 = oracle_cmm(x64, wide)  # the float64 path, from the reference
    oracle = oracle_along(x64, wide, "float32", nodes64, accumulation)
    # Bound on |block - masked64|: oracle_along's output_tolerance bounds a float32 evaluation's error
    # (logits: gamma(d_in+1, u32) S each, through GELU's Lipschitz constant 1.13 and its own 8 u32 |z|
    # rounding; tree sum: gamma(m+2, u32) T, m = K(D+1) terms) plus the float64 oracle's, derived in
    # fffcore.conformance.tolerances. The masked evaluation is a second float64 computation: its
    # logits err by gamma(d_in+1, u64) S and its dense output sum by gamma(m+1, u64) T, since the
    # K*N - m masked terms are exact zeros, which add no rounding. That is the bound of a float64
    # computation along the path, added once more: output_tolerance("float64", ...).
    tree = np.arange(wide.trees)[None, :, None]
    evaluation = oracle.evaluation
    masked_rounding = tolerances.output_tolerance(
        "float64",
        wide.activation,
        evaluation.logits,
        tolerances.logit_tolerance("float64", wide.d_in, evaluation.logit_scale),
        np.abs(wide.w_out[tree, nodes64]),
        evaluation.output_scale,
    )
    bound = oracle.output_tolerance + masked_rounding
    # A branch whose float64 logit lies inside the float32 band may rightly go either way; the last
    # level decides no branch.
    near_tie = tolerances.branch_is_ambiguous(
        "float32", wide.d_in, evaluation.logits[:, :, :-1], evaluation.logit_scale[:, :, :-1], accumulation=accumulation
    ).any(axis=(1, 2))
    bad = mismatches(output, expected, bound, oracle.output_unverifiable)
    bad[near_tie] = False
    if bad.any():
        row, column = np.argwhere(bad)[0]
        return BlockCheck(
            layer,
            False,
            f"row {first_row + row} output {column}: got {output[row, column]:.7g}, dense masked float64 "
            f"{expected[row, column]:.7g}, |error| {abs(output[row, column] - expected[row, column]):.3g} "
            f"> bound {bound[row, column]:.3g}",
            x.shape[0],
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.abs(output.astype(np.float64) - expected) / bound
    clear = ~near_tie
    worst = float(np.nanmax(ratio[clear])) if clear.any() else 0.0
    other = unchecked = 0
    for row in np.flatnonzero(near_tie):
        verdict = _check_near_tie_row(x64[row], wide, output[row], nodes64[row], accumulation)
        if verdict is None:
            unchecked += 1
        elif verdict == "none":
            return BlockCheck(
                layer,
                False,
                f"row {first_row + row} has a near tie and its output matches none of its valid paths",
                x.shape[0],
            )
        elif verdict == "other":
            other += 1
    return BlockCheck(layer, True, "", x.shape[0], int(near_tie.sum()), other, unchecked, worst)


def _check_near_tie_row(
    x64: np.ndarray, wide: FFFParams, output: np.ndarray, nodes64: np.ndarray, accumulation: str | None
) -> str | None:
    """Which valid path one near-tie row's output matches: "float64" (its float64 path), "other", "none".

    The yardstick here is the float64 oracle along each valid path (both children at every branch
    inside the rounding band; the same sum as the masked evaluation, without its zero terms), with
    the float32 bounds. None: too many valid paths to enumerate.
    """
    from fffcore.conformance.checks import mismatches, oracle_along, valid_path_combinations

    candidates = valid_path_combinations(x64, wide, "float32", accumulation)
    if candidates is None:
        return None
    rows = np.repeat(x64[None, :], len(candidates), axis=0)
    along = oracle_along(rows, wide, "float32", candidates, accumulation)
    got = np.broadcast_to(output, along.evaluation.output.shape)
    matches = ~mismatches(got, along.evaluation.output, along.output_tolerance, along.output_unverifiable).any(axis=1)
    if not matches.any():
        return "none"
    own = np.all(candidates == nodes64[None], axis=(1, 2))
    return "float64" if matches[own].any() else "other"


def capture_block_io(model: Any, inputs: dict[str, Any]) -> list[tuple[Any, Any] | None]:
    """One forward pass of ``model``, recording each encoder layer's ``intermediate`` input and output.

    Returns, per layer, (input (batch, seq, width), output (batch, seq, width)) tensors, or None
    where the block was not called.
    """
    import torch

    captured: list[tuple[Any, Any] | None] = []
    handles = []
    for index, layer in enumerate(encoder_layers(model)):
        captured.append(None)

        def record(_module: Any, args: tuple[Any, ...], result: Any, index: int = index) -> None:
            captured[index] = (args[0].detach().clone(), result.detach().clone())

        handles.append(layer.intermediate.register_forward_hook(record))
    try:
        with torch.inference_mode():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def check_variant(
    variant: str,
    model: Any,
    params: Sequence[FFFParams],
    masked: Sequence[Any],
    inputs: dict[str, Any],
    accumulation: str | None = None,
) -> VariantCheck:
    """Run ``model`` once on ``inputs`` and check every FFF block on the input it actually received."""
    batch = int(inputs["input_ids"].shape[0])
    result = VariantCheck(variant, batch)
    for index, io in enumerate(capture_block_io(model, inputs)):
        if io is None:
            result.blocks.append(BlockCheck(index, False, "the block was not called", 0))
            continue
        block_in, block_out = io
        if block_out.dtype != block_in.dtype:
            result.blocks.append(BlockCheck(index, False, f"output dtype {block_out.dtype}, input {block_in.dtype}", 0))
            continue
        rows = block_in.reshape(-1, block_in.shape[-1]).float().numpy()
        out = block_out.reshape(-1, block_out.shape[-1]).float().numpy()
        result.blocks.append(check_block(index, rows, params[index], out, masked[index], accumulation))
        if variant == AUTO and result.resolved_backend is None:
            block = encoder_layers(model)[index].intermediate
            # The block's own (torch) parameters, as it passes them: the choice may depend on their array type.
            own = block.params() if callable(getattr(block, "params", None)) else params[index]
            result.resolved_backend = resolved_backend_name(block_in, own)
    return result


def resolved_backend_name(x: Any, params: FFFParams) -> str | None:
    """The backend the automatic choice gives for ``x`` (:func:`fffcore.resolve_backend`)."""
    try:
        return str(fffcore.resolve_backend(x, params).name)
    except Exception as error:  # a diagnostic only: never let it fail the benchmark
        return f"unknown ({type(error).__name__}: {error})"


def accumulation_of(backend: str | None) -> str | None:
    """The float32 accumulation dtype ``backend`` declares (None: float32 itself, or the backend is automatic)."""
    if backend is None:
        return None
    return fffcore.get_backend(backend).accumulation_dtypes.get("float32")


# --------------------------------------------------------------------------- timing


def time_round_robin(
    calls: dict[str, Callable[[dict[str, Any]], Any]],
    pool: Sequence[dict[str, Any]],
    *,
    rounds: int,
    warmup: int,
    max_rounds: dict[str, int] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each variant: ``warmup`` untimed rounds, then ``rounds`` timed ones.

    Each round calls every variant once on the same input, the round's own from ``pool``
    (so FFF paths differ between rounds), starting one variant later than the round before,
    so that none always runs right after the same other one. ``max_rounds[name]`` caps the
    timed calls of a slow variant (it is timed in the first rounds only).
    """
    import torch

    names = list(calls)
    limits = max_rounds or {}
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for index in range(warmup + rounds):
            inputs = pool[index % len(pool)]
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                timed = index >= warmup
                if timed and len(times[name]) >= limits.get(name, rounds):
                    continue
                elapsed = seconds_per_call(lambda call=calls[name], inputs=inputs: call(inputs))
                if timed:
                    times[name].append(elapsed)
    return times


def summarise_batch(batch: int, seq: int, times: dict[str, list[float]]) -> dict[str, Any]:
    """Medians, tokens/s and ratios vs dense for one batch size, with the Amdahl bound.

    ``bound = t_dense / t_without_feedforward`` (medians): the speed-up no feedforward
    replacement can beat; ``feedforward_share = 1 - t_without / t_dense``.
    """
    from fffcore.benchmarks.timing import Timing

    timings = {name: Timing(values, 1, float("nan")) for name, values in times.items() if values}
    medians = {name: timing.median for name, timing in timings.items()}
    dense = medians.get(DENSE)
    without = medians.get(WITHOUT_FEEDFORWARD)
    bound = dense / without if dense and without else None
    variants = {}
    for name, median in medians.items():
        speedup = dense / median if dense else None
        q1, q3 = timings[name].quartiles
        variants[name] = {
            "median_s": median,
            "q1_s": q1,
            "q3_s": q3,
            "spread": timings[name].spread,
            "samples_s": times[name],
            "tokens_per_second": batch * seq / median,
            "speedup_vs_dense": speedup,
            "fraction_of_bound": speedup / bound if speedup is not None and bound else None,
        }
    return {
        "batch": batch,
        "tokens": batch * seq,
        "variants": variants,
        "bound": bound,
        "feedforward_share": 1 - without / dense if dense and without else None,
    }


# --------------------------------------------------------------------------- report


def format_table(batches: Sequence[dict[str, Any]], order: Sequence[str], failed: Sequence[str]) -> str:
    """One line per variant and batch: ms per forward (median, spread), tokens/s, speed-up vs dense, of the bound.

    The spread is half the interquartile range of the samples relative to the median, as in ``fff compare``.
    """
    from fffcore.benchmarks.report import format_rate, three_digits

    header = (
        f"{'variant':<16} {'batch':>5} {'ms/forward':>11} {'spread':>7} {'tokens/s':>9} {'vs dense':>9} {'of bound':>9}"
    )
    lines = [header, "-" * len(header)]
    for entry in batches:
        for name in order:
            if name in failed:
                lines.append(f"{name:<16} {entry['batch']:>5} {'check FAILED: not timed':>49}")
                continue
            row = entry["variants"].get(name)
            if row is None:
                continue
            speedup = "-" if row["speedup_vs_dense"] is None else f"{three_digits(row['speedup_vs_dense'])}x"
            share = "-" if row["fraction_of_bound"] is None else f"{row['fraction_of_bound']:.0%}"
            lines.append(
                f"{name:<16} {entry['batch']:>5} {three_digits(row['median_s'] * 1e3):>11} "
                f"{'±' + format(50 * row['spread'], '.0f') + '%':>7} "
                f"{format_rate(row['tokens_per_second']):>9} {speedup:>9} {share:>9}"
            )
        if entry["bound"] is not None:
            lines.append(
                f"{'':<16} {entry['batch']:>5}  bound t_dense / t_without_feedforward = {entry['bound']:.2f}x; "
                f"feedforward share of the dense model's time {entry['feedforward_share']:.0%}"
            )
    return "\n".join(lines)


def _load_note(before: list[float] | None, after: list[float] | None, cores: int) -> str:
    """The 1-minute load averages, and a warning when the machine was busy before this run began.

    Only the load from before the run decides: the one after counts this run's own threads
    (torch's and numba's pools, both sized to the cores).
    """
    if before is None or after is None:
        return ""
    busy = before[0] > cores / 2  # the run sizes its pools to every core: a load of half of them already competes
    note = "; other processes were running, so absolute times may be inflated: read the ratios" if busy else ""
    return f"load average (1 min) before/after: {before[0]:.1f}/{after[0]:.1f} on {cores} cores{note}"


# --------------------------------------------------------------------------- command


@dataclass
class Variants:
    """The models timed, in table order, all sharing the dense model's non-feedforward weights.

    Attributes:
        models: name -> model: ``dense``, ``fff:auto``, ``fff:<backend>``..., ``no-feedforward``.
        fff_backends: FFF variant name -> the backend it asks for (None: automatic choice).
        skipped: requested backends left out, with the reason.
    """

    models: dict[str, Any]
    fff_backends: dict[str, str | None]
    skipped: dict[str, str]

    def describe(self, name: str) -> dict[str, Any]:
        if name in self.fff_backends:
            return {"kind": "fff", "backend": self.fff_backends[name]}
        return {"kind": name, "backend": None}


def build_variants(settings: Settings, params: Sequence[FFFParams]) -> Variants:
    """The dense model, one FFF model per available backend and the automatic choice, and the stripped model."""
    backends, skipped = available_fff_backends(settings.backends)
    dense = build_dense_model(settings)
    fff_backends: dict[str, str | None] = {AUTO: None, **{f"fff:{name}": name for name in backends}}
    models = {DENSE: dense}
    models.update({name: with_fff(dense, params, backend) for name, backend in fff_backends.items()})
    models[WITHOUT_FEEDFORWARD] = without_feedforward(dense)
    return Variants(models, fff_backends, skipped)


def run_checks(
    variants: Variants, params: Sequence[FFFParams], pools: dict[int, list[dict[str, Any]]]
) -> list[VariantCheck]:
    """Every FFF variant at every batch size, on the first input of that batch size's pool (untimed)."""
    masked = [masked_module(layer_fff) for layer_fff in params]
    return [
        check_variant(name, variants.models[name], params, masked, pool[0], accumulation_of(backend))
        for batch, pool in pools.items()
        for name, backend in variants.fff_backends.items()
    ]


def time_variants(
    settings: Settings, models: dict[str, Any], pools: dict[int, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """:func:`summarise_batch` of each batch size, the ``models`` timed round-robin on its pool."""
    calls = {name: (lambda inputs, model=model: model(**inputs)) for name, model in models.items()}
    summaries = []
    for batch, pool in pools.items():
        times = time_round_robin(
            calls,
            pool,
            rounds=settings.rounds,
            warmup=settings.warmup,
            max_rounds={"fff:reference": settings.reference_rounds},
        )
        summaries.append(summarise_batch(batch, settings.seq, times))
    return summaries


def describe_run(settings: Settings) -> str:
    """The header line: model shape, FFF shape, inputs, library versions, torch threads."""
    import torch

    transformers = require_transformers()
    return (
        f"BERT-shaped model: {settings.layers} layers, width {settings.width}, {settings.heads} heads, dense "
        f"feedforward {settings.intermediate}; FFF 1 tree of depth {settings.depth} ({2 ** (settings.depth + 1) - 1} "
        f"neurons, {settings.depth + 1} visited); seq {settings.seq}, batches {','.join(map(str, settings.batches))}; "
        f"float32 CPU; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build, check, time, print; write JSON if asked. Returns 0, or 1 when any check failed."""
    settings, json_path = parse_arguments(argv)
    transformers = require_transformers()
    import torch

    from fffcore.benchmarks.machine import available_cores, describe_machine, load_average, thread_settings

    load_before = load_average()  # before this process loads the cores itself
    params = layer_params(settings)
    variants = build_variants(settings, params)
    vocab = variants.models[DENSE].config.vocab_size
    pools = {b: make_input_pool(vocab, b, settings.seq, settings.pool, settings.seed) for b in settings.batches}
    print(describe_run(settings))
    for name, reason in variants.skipped.items():
        print(f"skipped fff:{name}: {reason}")

    checks = run_checks(variants, params, pools)
    for check in checks:
        print(f"check {check.variant:<14} batch {check.batch:>3}: {'ok' if check.ok else 'FAILED'}: {check.summary()}")
    failed = sorted({check.variant for check in checks if not check.ok})
    auto_backend = next((c.resolved_backend for c in checks if c.variant == AUTO and c.resolved_backend), None)

    # Only variants whose every check passed are timed: a wrong result's speed is never reported.
    started = WALL.start()
    batches = time_variants(settings, {k: m for k, m in variants.models.items() if k not in failed}, pools)
    elapsed = WALL.stop(started)
    load_after = load_average()

    print()
    print(format_table(batches, list(variants.models), failed))
    fewer = f" ({settings.reference_rounds} for fff:reference)" if "fff:reference" in variants.models else ""
    print(
        f"medians over {settings.rounds} round-robin rounds{fewer} after {settings.warmup} warm-up rounds, "
        f"{elapsed:.0f} s; spread: half the interquartile range; 'of bound': speed-up / bound"
    )
    if auto_backend is not None:
        print(f"{AUTO} was served by the {auto_backend!r} backend")
    threads = thread_settings()
    print("threads: " + "; ".join(f"{pool}: {count}" for pool, count in threads.items()))
    note = _load_note(load_before, load_after, available_cores())
    if note:
        print(note)

    if json_path:
        record = {
            "format": JSON_FORMAT,
            "machine": describe_machine(threads),
            "settings": {
                **asdict(settings),
                "dtype": "float32",
                "device": "cpu",
                "torch_threads": torch.get_num_threads(),
                "transformers": transformers.__version__,
                "attention_implementation": getattr(variants.models[DENSE].config, "_attn_implementation", None),
                "skipped_backends": variants.skipped,
                "elapsed_s": elapsed,
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
            "variants": {name: variants.describe(name) for name in variants.models},
            "auto_backend": auto_backend,
            "checks": [check.to_json() for check in checks],
            "failed": failed,
            "batches": batches,
            "ok": not failed,
        }
        target = Path(json_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {json_path}")
    if failed:
        print(f"check failed for {', '.join(failed)}: not timed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
