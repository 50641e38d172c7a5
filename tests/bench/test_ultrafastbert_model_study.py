"""The UltraFastBERT speed study: its configuration is the published one, and it refuses to overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks.studies import ultrafastbert_model as study

DATA = Path(__file__).resolve().parents[1] / "data" / "ultrafastbert"


def test_the_timed_configuration_is_the_published_one_at_full_size():
    from fffcore.ultrafastbert_model import check_arch, published_arch

    arch = check_arch(published_arch(16))
    assert (arch["num_transformer_layers"], arch["hidden_size"], arch["intermed_depth"], arch["intermed_size"]) == (
        16,
        768,
        11,
        1,
    )
    assert arch["embedding"]["vocab_size"] == 32768 and arch["attention"]["num_attention_heads"] == 12
    small = json.loads((DATA / "mlm-1tree" / "config.json").read_text())["arch"]
    sizes = {"num_transformer_layers", "hidden_size", "intermed_depth", "embedding", "attention", "classification_head"}
    assert {k: v for k, v in small.items() if k not in sizes} == {k: v for k, v in arch.items() if k not in sizes}


def test_the_results_file_must_be_new(tmp_path, capsys):
    existing = tmp_path / "results.json"
    existing.write_text("{}")
    with pytest.raises(SystemExit) as stopped:
        study.main([str(tmp_path), "--json", str(existing)])
    assert stopped.value.code == 2 and "exists" in capsys.readouterr().err
    assert existing.read_text() == "{}"


def test_a_patched_contestant_restores_what_it_changed_even_when_it_fails():
    import types

    module = types.SimpleNamespace(flag=True)
    seen = []
    study.patched(module, "flag", False, lambda: seen.append(module.flag))()
    assert seen == [False] and module.flag is True

    def fail():
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        study.patched(module, "flag", False, fail)()
    assert module.flag is True
    assert study.speedup({"paper": [4.0, 9.0, 6.0], "fffcore": [2.0, 3.0, 1.0]}, "fffcore") == 3.0
