"""Layer files (:mod:`fffcore.layer_file`): ``FFFParams.save`` and ``load``, in the safetensors format."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import fffcore


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
def test_a_saved_layer_loads_back_bit_for_bit(tmp_path, dtype, bias):
    layer = fffcore.FFFParams.random(d_in=12, d_out=5, depth=3, trees=2, dtype=dtype, seed=1, bias=bias)
    layer = layer.with_activation("silu")
    layer.save(tmp_path / "layer.safetensors")
    loaded = fffcore.FFFParams.load(tmp_path / "layer.safetensors")
    assert (loaded.activation, loaded.dtype, loaded.depth, loaded.trees) == ("silu", dtype, 3, 2)
    for name in ("w_in", "b_in", "w_out"):
        original, back = getattr(layer, name), getattr(loaded, name)
        assert (back is None) == (original is None)
        if original is not None:
            np.testing.assert_array_equal(back, original)
    assert not list(tmp_path.glob(".*partial"))  # written to a temporary name, then renamed


def test_other_safetensors_libraries_read_it():
    safetensors = pytest.importorskip("safetensors.numpy")
    import tempfile
    from pathlib import Path

    layer = fffcore.FFFParams.random(d_in=6, d_out=4, depth=2, seed=2)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "layer.safetensors"
        layer.save(path)
        tensors = safetensors.load_file(str(path))
    assert sorted(tensors) == ["b_in", "w_in", "w_out"]
    np.testing.assert_array_equal(tensors["w_out"], layer.w_out)


def test_a_bfloat16_layer_round_trips_through_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from fffcore.torch import to_torch

    layer = to_torch(fffcore.FFFParams.random(d_in=6, d_out=4, depth=2, seed=3), "cpu", dtype=torch.bfloat16)
    layer.save(tmp_path / "layer.safetensors")
    loaded = fffcore.FFFParams.load(tmp_path / "layer.safetensors")
    assert loaded.dtype == "bfloat16" and torch.equal(loaded.w_in, layer.w_in)


def write_safetensors(path, header: dict, payload: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload)


def test_files_that_are_not_layer_files_are_refused_with_the_reason(tmp_path):
    good = fffcore.FFFParams.random(d_in=4, d_out=3, depth=1, seed=4)
    write_safetensors(tmp_path / "model.safetensors", {"__metadata__": {"format": "pt"}})
    write_safetensors(tmp_path / "no_w_out.safetensors", {"__metadata__": {"format": "fffcore-layer", "version": "1"}})
    w_in = {"dtype": "F32", "shape": [1, 3, 4], "data_offsets": [0, 48]}
    write_safetensors(
        tmp_path / "short.safetensors",
        {"__metadata__": {"format": "fffcore-layer", "version": "1"}, "w_in": w_in, "w_out": w_in},
        b"\0" * 10,
    )
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    (tmp_path / "text.safetensors").write_bytes(struct.pack("<Q", 5) + b"nope!")
    good.save(tmp_path / "good.safetensors")
    cases = {
        "model.safetensors": "not an fffcore layer file",
        "no_w_out.safetensors": "has no w_in, w_out",
        "short.safetensors": "does not hold shape",
        "tiny.safetensors": "not a safetensors file",
        "text.safetensors": "its header is not JSON",
        "missing.safetensors": "cannot read the layer file",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message) as raised:
            fffcore.FFFParams.load(tmp_path / name)
        assert name in str(raised.value)
