"""The performance model of the cupy kernels (benchmarks/gpu_model.py): its figures, its limits and its inputs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from fffcore.benchmarks import gpu_model
from fffcore.benchmarks.gpu_model import (
    GPUS,
    H100_SXM,
    H200_SXM,
    GPUSpec,
    Layer,
    cmm,
    dense_cost,
    floor_bytes,
    measured_dense_seconds,
    paper_layer,
    predict,
    row_grouped,
    warp_per_row,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / gpu_model.H200_RESULTS_FILE
BATCHES = (0, 1, 2, 16, 128, 1000, 4096, 16384, 65536, 262144)


def test_floor_at_the_paper_layer_in_bfloat16_batch_16384():
    layer = paper_layer("bfloat16")
    floor = floor_bytes(layer, 16384)
    assert 16384 * 768 * 2 * 2 == pytest.approx(50.3e6, rel=1e-3)  # x and y
    assert floor == pytest.approx(50.3e6 + 12.6e6, rel=0.01)  # and every weight row once
    assert floor / H200_SXM.hbm_bytes_per_second == pytest.approx(13.1e-6, rel=0.02)
    assert floor / H100_SXM.hbm_bytes_per_second == pytest.approx(18.8e-6, rel=0.02)
    assert warp_per_row(layer, 16384, H200_SXM).floor_seconds == pytest.approx(13.1e-6, rel=0.02)


def test_warp_per_row_moves_about_1_2_gb_of_weights_through_l2_at_float32_batch_16384():
    prediction = warp_per_row(paper_layer("float32"), 16384, H200_SXM)
    rows_io = 16384 * 768 * 4 * 2
    assert prediction.l2_bytes - rows_io == pytest.approx(1.21e9, rel=0.02)  # 12 + 12 rows of 3 KB per row
    assert prediction.hbm_bytes == pytest.approx(floor_bytes(paper_layer("float32"), 16384), rel=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_row_grouped_moves_less_through_l2_than_warp_per_row_from_some_batch_on(dtype):
    layer = paper_layer(dtype)
    less = [row_grouped(layer, b, H200_SXM).l2_bytes < warp_per_row(layer, b, H200_SXM).l2_bytes for b in BATCHES[1:]]
    assert not less[0], "at batch 1 there is nothing to share"
    first = less.index(True)
    assert all(less[first:]), f"row-grouped stops moving less after batch {BATCHES[1:][first]}: {less}"
    assert row_grouped(layer, 16384, H200_SXM).l2_bytes < 0.7 * warp_per_row(layer, 16384, H200_SXM).l2_bytes


def all_predictions():
    for gpu in GPUS:
        for layer in (paper_layer("float32"), paper_layer("bfloat16"), Layer(1024, 512, 14, 3, "float32", False)):
            for kernel in gpu_model.KERNELS:
                yield kernel, gpu, layer, [predict(kernel, layer, b, gpu) for b in BATCHES]
            yield "tiles", gpu, layer, [warp_per_row(layer, b, gpu, tile_rows=128) for b in BATCHES]


@pytest.mark.parametrize(("kernel", "gpu", "layer", "predictions"), list(all_predictions()))
def test_shares_are_at_most_one_and_everything_grows_with_the_batch(kernel, gpu, layer, predictions):
    for p in predictions:
        assert 0 <= p.share_of_floor <= 1 + 1e-12, (kernel, p.batch)
        assert p.l2_bytes >= p.hbm_bytes - 1e-6, (kernel, p.batch)  # every HBM byte passes through L2
    for attribute in ("hbm_bytes", "l2_bytes", "seconds", "floor_bytes"):
        values = [getattr(p, attribute) for p in predictions]
        assert values == sorted(values), (kernel, attribute, values)
    assert predictions[0].seconds == 0  # an empty batch launches nothing


def test_weights_that_do_not_fit_in_l2_are_read_again_from_hbm():
    big = Layer(768, 768, 15, 1, "float32")  # 403 MB of weights
    fits = dataclasses.replace(H200_SXM, l2_bytes=10**12)
    spilled = warp_per_row(big, 65536, H200_SXM)
    kept = warp_per_row(big, 65536, fits)
    assert kept.hbm_bytes == pytest.approx(floor_bytes(big, 65536))
    assert spilled.hbm_bytes > 3 * kept.hbm_bytes
    assert spilled.l2_bytes == kept.l2_bytes


def test_launches_per_kernel():
    layer = paper_layer("float32")
    assert warp_per_row(layer, 16384, H200_SXM).launches == 1
    assert cmm(layer, 16384, H200_SXM).launches == 1
    assert row_grouped(layer, 16384, H200_SXM).launches == 2 + gpu_model.SORT_LAUNCHES
    assert warp_per_row(layer, 1, H200_SXM).seconds == pytest.approx(gpu_model.LAUNCH_SECONDS, rel=0.05)
    many = Layer(768, 768, 11, 100, "float32")  # 64 trees per launch in float32: two groups
    assert warp_per_row(many, 4096, H200_SXM).launches == 2


def test_tiles_sharing_fetches_move_less_and_never_less_than_the_floor():
    layer = paper_layer("bfloat16")
    for b in BATCHES[1:]:
        tiled = warp_per_row(layer, b, H200_SXM, tile_rows=128)
        assert tiled.l2_bytes <= warp_per_row(layer, b, H200_SXM).l2_bytes
        assert tiled.l2_bytes >= floor_bytes(layer, b) * 0.999


def test_dense_reference_at_width_768():
    cost = dense_cost(paper_layer("float32"), 16384)
    assert cost.hidden == 3072
    assert cost.flops == pytest.approx(155e9, rel=0.01)
    assert cost.least_bytes == pytest.approx(16384 * 768 * 2 * 4 + (2 * 768 * 3072 + 3072 + 768) * 4)


def test_the_model_is_within_1_5x_of_the_float32_times_measured_on_the_h200():
    report = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert report["machine"]["l2_bytes"] == H200_SXM.l2_bytes
    measured = {(r["dtype"], r["batch"]): r["fff_seconds"] for r in report["results"]}
    for batch in (4096, 16384, 65536):
        predicted = warp_per_row(paper_layer("float32"), batch, H200_SXM).seconds
        assert 1 <= measured[("float32", batch)] / predicted <= 1.5, batch


def test_measured_dense_times_are_read_from_the_results_file():
    times = measured_dense_seconds(RESULTS)
    assert set(times[("float32", 16384)]) == {"dense", "dense_tf32"}
    assert set(times[("bfloat16", 16384)]) == {"dense"}
    assert times[("bfloat16", 16384)]["dense"] == pytest.approx(288e-6, rel=0.01)


def test_what_the_model_says_about_the_targets():
    dense = measured_dense_seconds(RESULTS)
    bf16, f32 = paper_layer("bfloat16"), paper_layer("float32")
    present = min(warp_per_row(bf16, 16384, H200_SXM).seconds, row_grouped(bf16, 16384, H200_SXM).seconds)
    assert dense[("bfloat16", 16384)]["dense"] / present < 8  # not met by the present kernels
    tiled = warp_per_row(bf16, 16384, H200_SXM, tile_rows=128)
    assert dense[("bfloat16", 16384)]["dense"] / tiled.seconds >= 8
    assert tiled.share_of_floor >= 1 / 3
    tiled32 = warp_per_row(f32, 16384, H200_SXM, tile_rows=128).seconds
    assert dense[("float32", 16384)]["dense_tf32"] / tiled32 >= 8
    for layer in (bf16, f32):
        for batch in (1, 128):
            assert dense[(layer.dtype, batch)]["dense"] / warp_per_row(layer, batch, H200_SXM).seconds >= 4


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: Layer(0, 768, 11), "d_in"),
        (lambda: Layer(768, -1, 11), "d_out"),
        (lambda: Layer(768, 768, 31), "depth"),
        (lambda: Layer(768, 768, 11, 0), "trees"),
        (lambda: Layer(768, 768, 11, 1, "int8"), "dtype"),
        (lambda: warp_per_row(paper_layer("float32"), -1, H200_SXM), "batch"),
        (lambda: cmm(paper_layer("float32"), 1.5, H200_SXM), "batch"),
        (lambda: row_grouped(Layer(768, 768, 0), 16, H200_SXM), "layer.depth"),
        (lambda: row_grouped(paper_layer("float32"), 16, H200_SXM, group_rows=0), "group_rows"),
        (lambda: warp_per_row(paper_layer("float32"), 16, H200_SXM, tile_rows=0), "tile_rows"),
        (lambda: warp_per_row(paper_layer("float32"), 16, GPUSpec("x", 0, 1, 1)), "gpu.hbm_bytes_per_second"),
        (lambda: predict("dense", paper_layer("float32"), 16, H200_SXM), "kernel"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=rf"^{argument}:"):
        make()


def test_expected_distinct():
    assert gpu_model.expected_distinct(0, 8) == 0
    assert gpu_model.expected_distinct(1, 8) == pytest.approx(1)
    assert gpu_model.expected_distinct(16384, 2048) == pytest.approx(2048 * (1 - math.exp(-8)), rel=1e-3)


def test_main_prints_every_table(capsys):
    gpu_model.main()
    out = capsys.readouterr().out
    for title in ("warp_per_row", "row_grouped", "cmm", "what-if", "measured dense"):
        assert title in out
    assert out.count("| bfloat16 | 16384 |") >= 6
