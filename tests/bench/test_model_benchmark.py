"""The end-to-end model benchmark: checked FFF blocks, every variant timed, ratios and bound as defined."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

import fffcore
from benchmarks.studies import model as bench
from fffcore.params import FFFParams


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules as None: import blocked
        return False


needs_model_stack = pytest.mark.skipif(
    not (importable("transformers") and importable("torch")),
    reason="the model benchmark needs transformers and torch: pip install 'fffcore[model]'",
)
needs_torch = pytest.mark.skipif(not importable("torch"), reason="the check needs torch: pip install 'fffcore[torch]'")

#: A tiny BERT (2 layers, width 32) with depth-3 FFFs: the whole command in about a second.
TINY = [
    "--layers", "2", "--width", "32", "--heads", "2", "--intermediate", "128", "--depth", "3",
    "--seq", "8", "--batches", "1,2", "--rounds", "2", "--warmup", "1", "--reference-rounds", "1", "--pool", "2",
]  # fmt: skip
AVAILABLE = {row.name for row in fffcore.list_backends() if row.available}
CPU_BACKENDS = [name for name in bench.DEFAULT_BACKENDS if name in AVAILABLE]  # in the command's order


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices gain nothing from threads, and on a shared machine spinning threads cost seconds."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def record(tmp_path_factory, one_torch_thread):
    path = tmp_path_factory.mktemp("model") / "model.json"
    assert bench.main([*TINY, "--json", str(path)]) == 0
    return json.loads(path.read_text(encoding="utf-8"))


def expected_variants() -> list[str]:
    return [bench.DENSE, bench.AUTO, *(f"fff:{name}" for name in CPU_BACKENDS), bench.WITHOUT_FEEDFORWARD]


@needs_model_stack
def test_every_variant_is_timed_at_every_batch_with_positive_times(record):
    assert record["format"] == bench.JSON_FORMAT and record["ok"] is True and record["failed"] == []
    assert list(record["variants"]) == expected_variants()
    assert [entry["batch"] for entry in record["batches"]] == [1, 2]
    for entry in record["batches"]:
        assert list(entry["variants"]) == expected_variants()
        for name, row in entry["variants"].items():
            rounds = 1 if name == "fff:reference" else 2  # the reference runs fewer rounds
            assert len(row["samples_s"]) == rounds and all(t > 0 for t in row["samples_s"]), name
            assert row["median_s"] == pytest.approx(float(np.median(row["samples_s"])), rel=1e-12)
            assert row["q1_s"] <= row["median_s"] <= row["q3_s"] and row["spread"] >= 0
            assert row["tokens_per_second"] == pytest.approx(entry["batch"] * 8 / row["median_s"], rel=1e-12)


@needs_model_stack
def test_every_fff_block_passed_its_check_at_every_batch(record):
    checked = {(check["variant"], check["batch"]) for check in record["checks"]}
    fff_variants = [name for name in expected_variants() if name.startswith("fff:")]
    assert checked == {(name, batch) for name in fff_variants for batch in (1, 2)}
    for check in record["checks"]:
        assert check["ok"], check["summary"]
        assert [block["layer"] for block in check["blocks"]] == [0, 1]
        # every token of the batch went through every block and was compared
        assert all(block["rows"] == check["batch"] * 8 and 0 <= block["worst"] <= 1 for block in check["blocks"])


@needs_model_stack
def test_speedups_are_ratios_of_medians_and_the_bound_follows_its_definition(record):
    for entry in record["batches"]:
        rows = entry["variants"]
        dense = rows[bench.DENSE]["median_s"]
        without = rows[bench.WITHOUT_FEEDFORWARD]["median_s"]
        assert entry["bound"] == pytest.approx(dense / without, rel=1e-12)
        assert entry["feedforward_share"] == pytest.approx(1 - without / dense, rel=1e-12)
        assert rows[bench.DENSE]["speedup_vs_dense"] == 1.0
        for name, row in rows.items():
            assert row["speedup_vs_dense"] == pytest.approx(dense / row["median_s"], rel=1e-12), name
            assert row["fraction_of_bound"] == pytest.approx(without / row["median_s"], rel=1e-12), name


@needs_model_stack
def test_settings_and_machine_are_recorded(record):
    settings = record["settings"]
    assert (settings["layers"], settings["width"], settings["depth"], settings["seq"]) == (2, 32, 3, 8)
    assert settings["dtype"] == "float32" and settings["torch_threads"] >= 1
    assert record["machine"]["cpu"] and "torch intra-op" in record["machine"]["threads"]
    assert record["variants"][bench.AUTO] == {"kind": "fff", "backend": None}


@needs_model_stack
def test_swapped_model_keeps_dropout_layernorm_and_shares_the_other_weights():
    import torch

    settings = bench.Settings(layers=2, width=32, heads=2, intermediate=128, depth=3)
    dense = bench.build_dense_model(settings)
    swapped = bench.with_fff(dense, bench.layer_params(settings), backend=None)
    stripped = bench.without_feedforward(dense)
    for model in (swapped, stripped):
        for layer, original in zip(bench.encoder_layers(model), bench.encoder_layers(dense), strict=True):
            assert isinstance(layer.output.dense, torch.nn.Identity)
            assert layer.output.LayerNorm.weight is original.output.LayerNorm.weight
            assert layer.attention.self.query.weight is original.attention.self.query.weight
    assert type(bench.encoder_layers(swapped)[0].intermediate).__name__ == "FFFInference"
    assert isinstance(bench.encoder_layers(stripped)[0].intermediate, torch.nn.Identity)
    # the dense model itself is untouched
    assert isinstance(bench.encoder_layers(dense)[0].output.dense, torch.nn.Linear)


@needs_model_stack
def test_a_perturbed_block_fails_its_check_is_never_timed_and_fails_the_command(
    tmp_path, monkeypatch, capsys, one_torch_thread
):
    import torch

    class Shifted(torch.nn.Module):
        """An FFF block whose output is off by 1e-3: far outside float32 rounding at width 32."""

        def __init__(self, block: torch.nn.Module) -> None:
            super().__init__()
            self.block = block

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(x) + 1e-3

    original = bench.make_fff_block

    def make_block(params: FFFParams, backend: str | None) -> torch.nn.Module:
        block = original(params, backend)
        return Shifted(block) if backend == "torch" else block

    monkeypatch.setattr(bench, "make_fff_block", make_block)
    path = tmp_path / "broken.json"
    assert bench.main([*TINY, "--batches", "1", "--backends", "torch", "--json", str(path)]) == 1
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["ok"] is False and record["failed"] == ["fff:torch"]
    verdicts = {(check["variant"], check["batch"]): check for check in record["checks"]}
    assert not verdicts["fff:torch", 1]["ok"] and "dense masked float64" in verdicts["fff:torch", 1]["summary"]
    assert verdicts[bench.AUTO, 1]["ok"]
    assert [entry["batch"] for entry in record["batches"]] == [1]
    assert list(record["batches"][0]["variants"]) == [bench.DENSE, bench.AUTO, bench.WITHOUT_FEEDFORWARD]
    printed = capsys.readouterr().out
    torch_lines = [line for line in printed.splitlines() if line.startswith("fff:torch ")]
    assert torch_lines and all("check FAILED: not timed" in line and " ms" not in line for line in torch_lines)


def near_tie_layer() -> tuple[np.ndarray, FFFParams]:
    """A row whose root logit is -2**-24 with S ~ 1: inside float32's rounding band, so either child is valid."""
    params = FFFParams.random(4, 3, 2, seed=5)
    w_in, b_in = np.array(params.w_in), np.array(params.b_in)
    w_in[0, 0] = [0.5, -0.5, 0.0, 0.0]
    b_in[0, 0] = 0.0
    x = np.array([[1.0, 1.0 + 2.0**-23, 0.25, -0.5]], dtype=np.float32)
    return x, FFFParams(w_in, b_in, params.w_out, params.activation)


@needs_torch
def test_a_near_tie_row_may_take_either_branch_but_no_other_path():
    from fffcore.reference.oracle import evaluate_path, oracle_cmm

    x, params = near_tie_layer()
    logits, nodes = oracle_cmm(x, params)
    assert nodes[0, 0, 1] == 1 and logits[0, 0, 0] == -(2.0**-24)  # float64 goes left at the root
    assert abs(logits[0, 0, 1]) > 1e-3  # the level-1 branch is clear
    masked = bench.masked_module(params)

    def output_along(path: list[int]) -> np.ndarray:
        return evaluate_path(x, params, np.array([[path]])).output.astype(np.float32)

    left = bench.check_block(0, x, params, output_along(list(nodes[0, 0])), masked)
    assert left.ok and (left.near_tie_rows, left.other_branch_rows) == (1, 0), left.detail

    right_logit = float(x[0].astype(np.float64) @ params.w_in[0, 2] + params.b_in[0, 2])
    right_path = [0, 2, 5 + int(right_logit > 0)]
    right = bench.check_block(0, x, params, output_along(right_path), masked)
    assert right.ok and (right.near_tie_rows, right.other_branch_rows) == (1, 1), right.detail

    wrong_path = [0, 1, 7 - nodes[0, 0, 2]]  # the other child at the clear level-1 branch
    wrong = bench.check_block(0, x, params, output_along(wrong_path), masked)
    assert not wrong.ok and "matches none of its valid paths" in wrong.detail


@needs_torch
def test_an_output_off_by_more_than_rounding_fails_the_check():
    params = FFFParams.random(32, 16, 3, seed=1)
    x = np.random.default_rng(0).standard_normal((40, 32)).astype(np.float32)
    output = fffcore.fff(x, params, backend="reference")
    masked = bench.masked_module(params)
    assert bench.check_block(0, x, params, output, masked).ok
    output[17, 3] += 1e-4 * max(1.0, abs(float(output[17, 3])))
    verdict = bench.check_block(0, x, params, output, masked)
    assert not verdict.ok and verdict.detail.startswith("row 17 output 3:")


def test_missing_transformers_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'fffcore\[model\]'"):
        bench.require_transformers()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--heads", "5"], "do not divide"),
        (["--batches", "1,x"], "comma-separated integers"),
        (["--rounds", "0"], "positive integer"),
    ],
)
def test_bad_options_exit_with_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.parse_arguments(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_reference_can_be_left_out():
    settings, _ = bench.parse_arguments(["--no-reference"])
    assert "reference" not in settings.backends and settings.backends == ("numba", "torch")
