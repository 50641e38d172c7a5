"""One FFF layer in a file: the safetensors format, read and written with numpy alone.

A layer file holds the tensors ``w_in`` (K, N, d_in), ``w_out`` (K, N, d_out) and, for a layer with
bias, ``b_in`` (K, N), all of one dtype (F16, BF16, F32 or F64), and in its metadata
``format = "fffcore-layer"``, ``version = "1"`` and ``activation``. The tree shape follows from the
tensors. Any safetensors library reads it; :meth:`fffcore.FFFParams.save` and
:meth:`fffcore.FFFParams.load` write and read it.

safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
and byte range, then the tensors' bytes, C-ordered and little-endian.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fffcore.params import FFFParams

FORMAT = "fffcore-layer"
VERSION = "1"
TENSORS = ("w_in", "b_in", "w_out")
_NUMPY_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
_CODES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}
#: A header larger than this is not a layer file's (three tensors and a few metadata strings).
_MAX_HEADER_BYTES = 1 << 20


def write_layer(params: FFFParams, path: str | os.PathLike[str]) -> None:
    """Write ``params`` to ``path`` as a layer file, atomically (a reader never sees half a file)."""
    from fffcore.arrays import host_values

    target = Path(path)
    arrays = {name: getattr(params, name) for name in TENSORS if getattr(params, name) is not None}
    header: dict[str, Any] = {"__metadata__": {"format": FORMAT, "version": VERSION, "activation": params.activation}}
    blobs = []
    offset = 0
    for name, array in arrays.items():
        host = np.ascontiguousarray(host_values(array))  # bfloat16 comes back as its 16-bit patterns
        blob = host.astype(host.dtype.newbyteorder("<"), copy=False).tobytes()
        span = [offset, offset + len(blob)]
        header[name] = {"dtype": _CODES[params.dtype], "shape": list(host.shape), "data_offsets": span}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensors start 8-byte aligned
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as file:
        file.write(struct.pack("<Q", len(text)))
        file.write(text)
        for blob in blobs:
            file.write(blob)
    os.replace(partial, target)


def read_layer(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """The arrays (``w_in``, ``w_out`` and, with a bias, ``b_in``) and the activation in the layer file
    ``path``; a ValueError naming the file and what is wrong with it. :meth:`fffcore.FFFParams.load`
    validates them as a layer."""
    source = Path(path)
    header, start = read_header(source)
    metadata = header.pop("__metadata__", {}) or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{source}: not an fffcore layer file (metadata format {metadata.get('format')!r}, expected {FORMAT!r}); "
            "for one layer of an UltraFastBERT checkpoint, name its key prefix instead"
        )
    if metadata.get("version") != VERSION:
        raise ValueError(f"{source}: layer file version {metadata.get('version')!r}; this fffcore reads {VERSION!r}")
    missing = [name for name in ("w_in", "w_out") if name not in header]
    if missing:
        raise ValueError(f"{source}: the layer file has no {', '.join(missing)} (it holds {sorted(header)})")
    arrays = {name: _tensor(source, name, header[name], start) for name in TENSORS if name in header}
    return arrays, metadata.get("activation", "")


def read_header(source: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of the safetensors file ``source`` and the offset where its tensor bytes start."""
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
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{source}: not a safetensors file (its header is not JSON: {error})") from error
    if not isinstance(header, dict):
        raise ValueError(f"{source}: not a safetensors file (its header is not a JSON object)")
    return header, 8 + length


def _tensor(source: Path, name: str, entry: Any, start: int) -> Any:
    try:
        code, shape, (begin, end) = entry["dtype"], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source}: tensor {name}: a malformed header entry {entry!r}") from error
    size = os.path.getsize(source)
    count = int(np.prod(shape))
    width = 2 if code in ("F16", "BF16") else 4 if code == "F32" else 8
    if code not in _CODES.values():
        raise ValueError(f"{source}: tensor {name}: dtype {code}, expected one of {sorted(_CODES.values())}")
    if end - begin != count * width or start + end > size:
        raise ValueError(f"{source}: tensor {name}: byte range {begin}-{end} does not hold shape {shape} of {code}")
    if code == "BF16":
        try:
            import torch  # numpy has no bfloat16: such layers live in torch tensors
        except ImportError as error:
            raise ValueError(f"{source}: a bfloat16 layer needs PyTorch: pip install 'fffcore[torch]'") from error

        bits = np.fromfile(source, dtype="<i2", count=count, offset=start + begin).reshape(shape)
        return torch.from_numpy(bits).view(torch.bfloat16)
    return np.memmap(source, dtype=_NUMPY_DTYPES[code], mode="r", offset=start + begin, shape=shape)
