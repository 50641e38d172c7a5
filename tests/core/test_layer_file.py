"""Layer files (:mod:`fffcore.layer_file`): ``FFFParams.save`` and ``load``, in the safetensors format."""

from __future__ import annotations

import importlib.util
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fffcore
from fffcore.arrays import host_values

HAVE_TORCH = importlib.util.find_spec("torch") is not None
#: Examples per run of the fuzz test: about 6 s on two cores.
FUZZ_EXAMPLES = 600


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
        "short.safetensors": "not a valid safetensors file",
        "tiny.safetensors": "not a safetensors file",
        "text.safetensors": "its header is not JSON",
        "missing.safetensors": "cannot read the layer file",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message) as raised:
            fffcore.FFFParams.load(tmp_path / name)
        assert name in str(raised.value)


# --- files written before fffcore read and wrote them with the safetensors library ------------------------

#: A layer written by the hand-written writer fffcore had before (relu; w_in [[0.5, -1]], b_in [0.25], w_out [2]).
OLD_WRITER_FILE = (
    b"\x08\x01\x00\x00\x00\x00\x00\x00"
    b'{"__metadata__":{"format":"fffcore-layer","version":"1","activation":"relu"},'
    b'"w_in":{"dtype":"F32","shape":[1,1,2],"data_offsets":[0,8]},'
    b'"b_in":{"dtype":"F32","shape":[1,1],"data_offsets":[8,12]},'
    b'"w_out":{"dtype":"F32","shape":[1,1,1],"data_offsets":[12,16]}}     '
    b"\x00\x00\x00?\x00\x00\x80\xbf\x00\x00\x80>\x00\x00\x00@"
)


def old_writer_bytes(arrays: dict, code: str, activation: str) -> bytes:
    """The bytes fffcore's previous, hand-written writer produced (its code, minus the file handling);
    ``arrays`` are numpy arrays (bfloat16 as int16 bit patterns)."""
    header = {"__metadata__": {"format": "fffcore-layer", "version": "1", "activation": activation}}
    blobs, offset = [], 0
    for name in ("w_in", "b_in", "w_out"):
        if name not in arrays:
            continue
        host = np.ascontiguousarray(arrays[name])
        blob = host.astype(host.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(host.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def test_a_file_written_by_the_old_writer_loads(tmp_path):
    (tmp_path / "old.safetensors").write_bytes(OLD_WRITER_FILE)
    layer = fffcore.FFFParams.load(tmp_path / "old.safetensors")
    assert (layer.activation, layer.dtype, layer.depth, layer.d_in, layer.d_out) == ("relu", "float32", 0, 2, 1)
    np.testing.assert_array_equal(layer.w_in, [[[0.5, -1.0]]])
    np.testing.assert_array_equal(layer.b_in, [[0.25]])
    np.testing.assert_array_equal(layer.w_out, [[[2.0]]])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
@pytest.mark.parametrize("bias", [True, False])
def test_files_of_every_dtype_from_the_old_writer_load_bit_for_bit(tmp_path, dtype, bias):
    layer = fffcore.FFFParams.random(d_in=5, d_out=3, depth=2, trees=2, bias=bias, seed=7)
    layer = layer.astype("float32" if dtype == "bfloat16" else dtype).with_activation("gelu_tanh")
    arrays = {name: getattr(layer, name) for name in ("w_in", "b_in", "w_out") if getattr(layer, name) is not None}
    if dtype == "bfloat16":
        torch = pytest.importorskip("torch")
        arrays = {
            name: torch.from_numpy(np.array(a)).bfloat16().view(torch.int16).numpy() for name, a in arrays.items()
        }
    code = {"float16": "F16", "float32": "F32", "float64": "F64", "bfloat16": "BF16"}[dtype]
    (tmp_path / "old.safetensors").write_bytes(old_writer_bytes(arrays, code, "gelu_tanh"))
    loaded = fffcore.FFFParams.load(tmp_path / "old.safetensors")
    assert (loaded.dtype, loaded.activation, loaded.has_bias) == (dtype, "gelu_tanh", bias)
    for name, expected in arrays.items():
        assert host_values(getattr(loaded, name)).tobytes() == expected.tobytes()


# --- saving: a temporary file of its own, renamed into place ------------------------------------------------


def test_save_never_writes_through_a_link_planted_beside_the_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = tmp_path / ".layer.safetensors.partial"  # the name the old writer used, predictably
    planted.symlink_to(victim)
    layer = fffcore.FFFParams.random(d_in=4, d_out=3, depth=1, seed=5)
    layer.save(tmp_path / "layer.safetensors")
    assert victim.read_text() == "precious"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)  # left as it was
    np.testing.assert_array_equal(fffcore.FFFParams.load(tmp_path / "layer.safetensors").w_in, layer.w_in)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".layer.safetensors.partial",
        "layer.safetensors",
        "victim.txt",
    ]


def test_save_replaces_a_link_at_the_target_itself_not_what_it_points_to(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "layer.safetensors").symlink_to(victim)
    fffcore.FFFParams.random(d_in=4, d_out=3, depth=1, seed=5).save(tmp_path / "layer.safetensors")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "layer.safetensors").is_symlink()


def test_saving_to_a_folder_is_a_value_error_that_leaves_nothing_behind(tmp_path):
    (tmp_path / "layer.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a folder") as raised:
        fffcore.FFFParams.random(d_in=4, d_out=3, depth=1, seed=5).save(tmp_path / "layer.safetensors")
    assert "layer.safetensors" in str(raised.value)
    assert [p.name for p in tmp_path.iterdir()] == ["layer.safetensors"]
    assert not list((tmp_path / "layer.safetensors").iterdir())


def test_a_save_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "layer.safetensors"
    old = fffcore.FFFParams.random(d_in=4, d_out=3, depth=1, seed=5)
    old.save(target)
    before = target.read_bytes()

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        fffcore.FFFParams.random(d_in=4, d_out=3, depth=1, seed=6).save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["layer.safetensors"]


def test_a_saved_layer_is_as_readable_as_any_new_file(tmp_path):
    path = tmp_path / "layer.safetensors"
    fffcore.FFFParams.random(d_in=4, d_out=3, depth=1, seed=5).save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0o600


# --- malformed files: each refused with one ValueError naming the file --------------------------------------

META = {"format": "fffcore-layer", "version": "1", "activation": "gelu"}


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def raw_file(header_text: bytes, payload: bytes = b"") -> bytes:
    """A safetensors file by hand: 8-byte little-endian header length, the JSON header, the bytes."""
    return struct.pack("<Q", len(header_text)) + header_text + payload


def header_file(header: dict, payload: bytes = b"") -> bytes:
    return raw_file(json.dumps(header).encode(), payload)


FLOATS = np.arange(1, 5, dtype="<f4").tobytes()  # 16 bytes: four float32 values


def negative_begin_offset() -> bytes:  # w_in would be the last 8 bytes of the JSON header
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", [1, 1, 2], -8, 0), "w_out": entry("F32", [1, 1, 1], 0, 4)},
        FLOATS[:4],
    )


def negative_dimension_bfloat16() -> bytes:  # w_in would be the bytes of b_in and w_out
    return header_file(
        {
            "__metadata__": META,
            "w_in": entry("BF16", [1, 1, -1], 0, -2),
            "b_in": entry("BF16", [1, 1], 0, 2),
            "w_out": entry("BF16", [1, 1, 1], 2, 4),
        },
        FLOATS[:4],
    )


def overlapping_offsets() -> bytes:
    return header_file(
        {
            "__metadata__": META,
            "w_in": entry("F32", [1, 1, 2], 0, 8),
            "b_in": entry("F32", [1, 1], 4, 8),
            "w_out": entry("F32", [1, 1, 1], 0, 4),
        },
        FLOATS[:8],
    )


def duplicate_tensor_name() -> bytes:
    w_in, w_out = json.dumps(entry("F32", [1, 1, 2], 0, 8)), json.dumps(entry("F32", [1, 1, 1], 8, 12))
    text = f'{{"__metadata__":{json.dumps(META)},"w_in":{w_in},"w_out":{w_out},"w_out":{w_out}}}'
    return raw_file(text.encode(), FLOATS[:12])


def duplicate_metadata_key() -> bytes:
    w_in, w_out = json.dumps(entry("F32", [1, 1, 2], 0, 8)), json.dumps(entry("F32", [1, 1, 1], 8, 12))
    metadata = '{"format":"fffcore-layer","version":"1","activation":"relu","activation":"gelu"}'
    text = f'{{"__metadata__":{metadata},"w_in":{w_in},"w_out":{w_out}}}'
    return raw_file(text.encode(), FLOATS[:12])


def string_offsets() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", [1, 1, 2], "0", "8"), "w_out": entry("F32", [1, 1, 1], 8, 12)},
        FLOATS[:12],
    )


def float_offsets() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", [1, 1, 2], 0.0, 8.0), "w_out": entry("F32", [1, 1, 1], 8, 12)},
        FLOATS[:12],
    )


def overflowing_shape() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", [2**62, 2**62, 4], 0, 8), "w_out": entry("F32", [1, 1, 1], 8, 12)},
        FLOATS[:12],
    )


def huge_dimension() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", [2**64, 1, 2], 0, 8), "w_out": entry("F32", [1, 1, 1], 8, 12)},
        FLOATS[:12],
    )


def metadata_not_an_object() -> bytes:
    return header_file(
        {
            "__metadata__": ["fffcore-layer"],
            "w_in": entry("F32", [1, 1, 2], 0, 8),
            "w_out": entry("F32", [1, 1, 1], 8, 12),
        },
        FLOATS[:12],
    )


def metadata_value_not_a_string() -> bytes:
    return header_file(
        {
            "__metadata__": {**META, "version": 1},
            "w_in": entry("F32", [1, 1, 2], 0, 8),
            "w_out": entry("F32", [1, 1, 1], 8, 12),
        },
        FLOATS[:12],
    )


def deeply_nested_header() -> bytes:
    return raw_file(b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def string_shape() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", ["1", "1", "2"], 0, 8), "w_out": entry("F32", [1, 1, 1], 8, 12)},
        FLOATS[:12],
    )


def boolean_shape() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", [True, True, 2], 0, 8), "w_out": entry("F32", [1, 1, 1], 8, 12)},
        FLOATS[:12],
    )


def bytes_after_the_last_tensor() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", [1, 1, 2], 0, 8), "w_out": entry("F32", [1, 1, 1], 8, 12)}, FLOATS
    )


def mixed_dtypes() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", [1, 1, 2], 0, 8), "w_out": entry("F16", [1, 1, 2], 8, 12)},
        FLOATS[:12],
    )


def integer_dtype() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("I32", [1, 1, 2], 0, 8), "w_out": entry("I32", [1, 1, 1], 8, 12)},
        FLOATS[:12],
    )


def wrong_dimensions() -> bytes:
    return header_file(
        {"__metadata__": META, "w_in": entry("F32", [2], 0, 8), "w_out": entry("F32", [1, 1, 1], 8, 12)}, FLOATS[:12]
    )


def unexpected_tensor() -> bytes:
    return header_file(
        {
            "__metadata__": META,
            "w_in": entry("F32", [1, 1, 2], 0, 8),
            "w_out": entry("F32", [1, 1, 1], 8, 12),
            "b_out": entry("F32", [1], 12, 16),
        },
        FLOATS,
    )


def huge_activation_name() -> bytes:  # just under the 1 MiB header limit
    return header_file(
        {
            "__metadata__": {**META, "activation": "x" * 1_040_000},
            "w_in": entry("F32", [1, 1, 2], 0, 8),
            "w_out": entry("F32", [1, 1, 1], 8, 12),
        },
        FLOATS[:12],
    )


MALFORMED = {
    case.__name__: case
    for case in (
        negative_begin_offset,
        negative_dimension_bfloat16,
        overlapping_offsets,
        duplicate_tensor_name,
        duplicate_metadata_key,
        string_offsets,
        float_offsets,
        overflowing_shape,
        huge_dimension,
        metadata_not_an_object,
        metadata_value_not_a_string,
        deeply_nested_header,
        string_shape,
        boolean_shape,
        bytes_after_the_last_tensor,
        mixed_dtypes,
        integer_dtype,
        wrong_dimensions,
        unexpected_tensor,
        huge_activation_name,
    )
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_layer_files_are_refused_with_one_short_value_error(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(MALFORMED[case]())
    with pytest.raises(ValueError) as raised:
        fffcore.FFFParams.load(path)
    message = str(raised.value)
    assert message.startswith(str(path)) and len(message) < len(str(path)) + 400, message[:1000]


def test_a_long_value_is_cut_in_the_message(tmp_path):
    path = tmp_path / "layer.safetensors"
    path.write_bytes(huge_activation_name())
    with pytest.raises(ValueError, match=r"metadata activation: .* got 'xxxx.*\.\.\. \(1040002 characters\)"):
        fffcore.FFFParams.load(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (duplicate_tensor_name, "names 'w_out' twice"),
        (duplicate_metadata_key, "names 'activation' twice"),
        (deeply_nested_header, "nested too deeply|not a valid safetensors file"),
        (mixed_dtypes, "tensor w_out: dtype 'F16', expected F32"),
        (integer_dtype, "tensor w_in: dtype 'I32'"),
        (wrong_dimensions, "tensor w_in: expected 3 dimensions"),
        (unexpected_tensor, r"tensors \['b_out'\]"),
        (negative_begin_offset, "not a valid safetensors file"),
        (overlapping_offsets, "not a valid safetensors file"),
    ],
)
def test_the_message_names_the_field(tmp_path, case, message):
    path = tmp_path / "layer.safetensors"
    path.write_bytes(case())
    with pytest.raises(ValueError, match=message):
        fffcore.FFFParams.load(path)


# --- fuzzing: whatever the bytes, a ValueError or a layer that round-trips --------------------------------

CODES = ["F16", "F32", "F64", "BF16"]
WIDTHS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I32": 4, "U8": 1, "BOOL": 1}
NUMPY = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "BF16": "<i2"}


@st.composite
def valid_layer_files(draw) -> bytes:
    code = draw(st.sampled_from(CODES if HAVE_TORCH else CODES[:3]))
    trees, depth = draw(st.integers(1, 2)), draw(st.integers(0, 2))
    d_in, d_out, nodes = draw(st.integers(1, 3)), draw(st.integers(1, 3)), 2 ** (depth + 1) - 1
    shapes = {"w_in": (trees, nodes, d_in), "w_out": (trees, nodes, d_out)}
    if draw(st.booleans()):
        shapes["b_in"] = (trees, nodes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = {
        name: rng.integers(0, 256, int(np.prod(s)) * WIDTHS[code], dtype=np.uint8).view(NUMPY[code]).reshape(s)
        for name, s in shapes.items()
    }
    return old_writer_bytes(arrays, code, draw(st.sampled_from(["gelu", "relu", "silu", "identity", "gelu_tanh"])))


JUNK = st.none() | st.booleans() | st.text(max_size=3) | st.floats(-1e3, 1e3) | st.lists(st.integers(0, 3), max_size=2)
INTS = st.integers(-3, 48) | st.sampled_from([2**31, 2**53, 2**63, 2**64, -(2**63)])
DTYPES = st.sampled_from(["F16", "BF16", "F32", "F64", "I32", "U8", "BOOL", "f32", "F8_E4M3"])
METADATA = (
    st.fixed_dictionaries(
        {
            "format": st.sampled_from(["fffcore-layer", "pt"]),
            "version": st.sampled_from(["1", "2", 1]),
            "activation": st.sampled_from(["gelu", "relu", "", "x" * 200]),
        }
    )
    | st.dictionaries(st.text(max_size=3), st.text(max_size=3) | INTS, max_size=2)
    | JUNK
)
NAMES = st.sampled_from(["w_in", "b_in", "w_out", "w_in ", "x"])


@st.composite
def random_headers(draw) -> bytes:
    """A random header; with tile=True the byte ranges tile the payload exactly, as valid files' do."""
    tile = draw(st.booleans())
    header: dict = {}
    if draw(st.booleans()):
        header["__metadata__"] = draw(METADATA)
    offset = 0
    for name in draw(st.lists(NAMES, max_size=4)):
        code = draw(DTYPES)
        if tile:
            shape = draw(st.lists(st.integers(0, 3), max_size=4))
            size = int(np.prod(shape)) * WIDTHS.get(code, 1)
            header[name] = entry(code, shape, offset, offset + size)
            offset += size
        else:
            header[name] = draw(
                st.fixed_dictionaries(
                    {
                        "dtype": DTYPES | JUNK,
                        "shape": st.lists(INTS | JUNK, max_size=4) | JUNK,
                        "data_offsets": st.lists(INTS | JUNK, max_size=3) | JUNK,
                    }
                )
                | JUNK
            )
    payload = draw(st.binary(min_size=offset, max_size=offset)) if tile else draw(st.binary(max_size=64))
    return header_file(header, payload)


@st.composite
def mutated_layer_files(draw) -> bytes:
    data = bytearray(draw(valid_layer_files()))
    kind = draw(st.sampled_from(["flip", "truncate", "length", "none"]))
    if kind == "flip":  # in the header or the tensors' bytes
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "length":
        data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1) | st.integers(0, len(data))))
    return bytes(data)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_layer_files() | random_headers())
def test_any_bytes_load_as_a_value_error_or_a_layer_that_round_trips(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz", numbered=True)
    path = folder / "layer.safetensors"
    path.write_bytes(data)
    try:
        layer = fffcore.FFFParams.load(path)
    except ValueError as error:
        event("refused")
        assert str(error).startswith(str(path)) and len(str(error)) < len(str(path)) + 400
        return
    event(f"loaded a {layer.dtype} layer")
    layer.save(folder / "again.safetensors")
    again = fffcore.FFFParams.load(folder / "again.safetensors")
    assert (again.activation, again.dtype, again.has_bias) == (layer.activation, layer.dtype, layer.has_bias)
    for name in ("w_in", "b_in", "w_out"):
        if getattr(layer, name) is not None:
            assert host_values(getattr(again, name)).tobytes() == host_values(getattr(layer, name)).tobytes()
    assert sorted(p.name for p in folder.iterdir()) == ["again.safetensors", "layer.safetensors"]
