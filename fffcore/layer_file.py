"""One FFF layer in a file: the safetensors format, read and written with the ``safetensors`` library.

A layer file holds the tensors ``w_in`` (K, N, d_in), ``w_out`` (K, N, d_out) and, for a layer with
bias, ``b_in`` (K, N), all of one dtype (F16, BF16, F32 or F64), and in its metadata
``format = "fffcore-layer"``, ``version = "1"`` and ``activation``. The tree shape follows from the
tensors. Any safetensors library reads it; :meth:`fffcore.FFFParams.save` and
:meth:`fffcore.FFFParams.load` write and read it.

safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
and byte range, then the tensors' bytes, C-ordered and little-endian.

Reading trusts nothing in the file: the ``safetensors`` library checks the header's types, that the
byte ranges tile the data exactly (no gap, no overlap, nothing outside the file) and that each range
holds its shape; fffcore refuses duplicate names and checks what a layer needs (the names, one dtype,
the dimensions, the metadata). Every refusal is one ``ValueError`` naming the file and the field,
with long values cut. Writing goes to a new file created exclusively beside the target (it never
follows a link it did not create), renamed over the target once complete, and removed on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fffcore.files import write_atomically
from fffcore.spec import ACTIVATIONS

if TYPE_CHECKING:
    from fffcore.params import FFFParams

FORMAT = "fffcore-layer"
VERSION = "1"
TENSORS = ("w_in", "b_in", "w_out")
#: The number of dimensions of each tensor: (K, N, d_in), (K, N), (K, N, d_out).
_DIMENSIONS = {"w_in": 3, "b_in": 2, "w_out": 3}
_CODES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}
#: A header larger than this is not a layer file's (three tensors and a few metadata strings).
_MAX_HEADER_BYTES = 1 << 20
#: Values quoted in error messages are cut to this many characters.
_QUOTE_CHARS = 80


def write_layer(params: FFFParams, path: str | os.PathLike[str]) -> None:
    """Write ``params`` to ``path`` as a layer file, atomically (a reader never sees half a file).

    The bytes go to a new file, created exclusively beside ``path`` (so a link planted there is never
    followed), which then replaces ``path``; on any failure it is removed. A ``path`` that is a folder
    is a ValueError.
    """
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{target}: is a folder; give the path of the layer file to write")
    try:
        write_atomically(target, _layer_bytes(params))
    except IsADirectoryError as error:  # a folder made there since the check
        raise ValueError(f"{target}: is a folder; give the path of the layer file to write") from error


def _layer_bytes(params: FFFParams) -> bytes:
    """The layer file's bytes: safetensors, written by the ``safetensors`` library."""
    from fffcore.arrays import host_values

    metadata = {"format": FORMAT, "version": VERSION, "activation": params.activation}
    # bfloat16 comes back as its 16-bit patterns
    arrays = {name: host_values(getattr(params, name)) for name in TENSORS if getattr(params, name) is not None}
    if params.dtype == "bfloat16":  # numpy has no bfloat16: the torch writer names it
        import safetensors.torch
        import torch

        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(bits)).view(torch.bfloat16) for name, bits in arrays.items()
        }
        return safetensors.torch.save(tensors, metadata=metadata)
    import safetensors.numpy

    return safetensors.numpy.save({name: np.ascontiguousarray(a) for name, a in arrays.items()}, metadata=metadata)


def read_layer(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """The arrays (``w_in``, ``w_out`` and, with a bias, ``b_in``) and the activation in the layer file
    ``path``; a ValueError naming the file and what is wrong with it. :meth:`fffcore.FFFParams.load`
    validates them as a layer.

    The arrays are numpy arrays, torch tensors for a bfloat16 layer (numpy has no bfloat16).
    """
    from safetensors import safe_open

    source = Path(path)
    read_header(source)  # refuses what the library lets through: a name given twice
    with _library_errors(source), safe_open(source, framework="numpy") as file:  # validates the byte ranges
        metadata = file.metadata() or {}
        names = [name for name in TENSORS if name in file.keys()]
        _check_layer(source, metadata, list(file.keys()))
        codes = {name: file.get_slice(name).get_dtype() for name in names}
        shapes = {name: list(file.get_slice(name).get_shape()) for name in names}
        _check_tensors(source, codes, shapes)
        if codes["w_in"] != "BF16":
            # copies: the arrays must not depend on the file staying as it is
            return {name: np.array(file.get_tensor(name)) for name in names}, metadata["activation"]
    try:
        import torch  # numpy has no bfloat16: such layers live in torch tensors
    except ImportError as error:
        raise ValueError(f"{source}: a bfloat16 layer needs PyTorch: pip install 'fffcore[torch]'") from error
    with _library_errors(source), safe_open(source, framework="pt") as file:
        tensors = {name: file.get_tensor(name).clone() for name in names}
    for name, tensor in tensors.items():
        if tensor.dtype != torch.bfloat16 or list(tensor.shape) != shapes[name]:  # the file changed meanwhile
            raise ValueError(f"{source}: tensor {name} changed while it was read")
    return tensors, metadata["activation"]


def _check_layer(source: Path, metadata: dict[str, str], names: list[str]) -> None:
    """A ValueError unless the metadata and tensor names are a layer file's."""
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{source}: not an fffcore layer file (metadata format {_quote(metadata.get('format'))}, "
            f"expected {FORMAT!r}); for one layer of an UltraFastBERT checkpoint, name its key prefix instead"
        )
    if metadata.get("version") != VERSION:
        raise ValueError(
            f"{source}: layer file version {_quote(metadata.get('version'))}; this fffcore reads {VERSION!r}"
        )
    missing = [name for name in ("w_in", "w_out") if name not in names]
    if missing:
        raise ValueError(f"{source}: the layer file has no {', '.join(missing)} (it holds {_quote(sorted(names))})")
    unexpected = sorted(set(names) - set(TENSORS))
    if unexpected:
        raise ValueError(f"{source}: tensors {_quote(unexpected)}: a layer file holds only {', '.join(TENSORS)}")
    activation = metadata.get("activation")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{source}: metadata activation: expected one of {ACTIVATIONS}, got {_quote(activation)}")


def _check_tensors(source: Path, codes: dict[str, str], shapes: dict[str, list[int]]) -> None:
    """A ValueError unless the tensors share one floating dtype and have a layer's dimensions."""
    if codes["w_in"] not in _CODES.values():
        raise ValueError(
            f"{source}: tensor w_in: dtype {_quote(codes['w_in'])}, expected one of {sorted(_CODES.values())}"
        )
    for name, code in codes.items():
        if code != codes["w_in"]:
            raise ValueError(f"{source}: tensor {name}: dtype {_quote(code)}, expected {codes['w_in']} to match w_in")
    for name, shape in shapes.items():
        if len(shape) != _DIMENSIONS[name]:
            raise ValueError(
                f"{source}: tensor {name}: expected {_DIMENSIONS[name]} dimensions, got shape {_quote(shape)}"
            )


def read_header(source: Path) -> dict[str, Any]:
    """The JSON header of the safetensors file ``source``; a ValueError for a file that has none, or
    whose header repeats a name (which safetensors readers resolve differently)."""
    try:
        with open(source, "rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{source}: not a safetensors file ({len(prefix)} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES:
                raise ValueError(f"{source}: not a safetensors file (a header of {length} bytes)")
            text = file.read(length)
    except OSError as error:
        raise ValueError(f"{source}: cannot read the layer file: {error.strerror or error}") from error
    if len(text) < length:
        raise ValueError(f"{source}: not a safetensors file (a header of {length} bytes in a shorter file)")
    try:
        header = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{source}: not a safetensors file (its header is not JSON: {_cut(str(error), 200)})"
        ) from error
    except _DuplicateName as error:
        raise ValueError(f"{source}: the header names {_quote(error.args[0])} twice") from error
    except RecursionError as error:
        raise ValueError(f"{source}: not a safetensors file (its header is nested too deeply)") from error
    if not isinstance(header, dict):
        raise ValueError(f"{source}: not a safetensors file (its header is not a JSON object)")
    return header


class _DuplicateName(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateName(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return result


@contextlib.contextmanager
def _library_errors(source: Path):  # type: ignore[no-untyped-def]
    """The ``safetensors`` library's errors as one ValueError naming the file (the ValueErrors of
    fffcore's own checks inside pass as they are)."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as error:
        raise ValueError(f"{source}: cannot read the layer file: {error.strerror or error}") from error
    except (SafetensorError, TypeError, OverflowError, MemoryError) as error:  # fffcore's own are ValueErrors
        raise ValueError(f"{source}: not a valid safetensors file: {_cut(str(error), 200)}") from error


def _quote(value: Any) -> str:
    """``repr(value)``, cut for an error message."""
    return _cut(repr(value), _QUOTE_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
