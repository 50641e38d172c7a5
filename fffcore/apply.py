"""Run one FFF layer over an array on disk and write the result to Zarr, resumably, on a Dask cluster.

The input (rows, d_in) is a Zarr array or a ``.npy`` file, read by the workers themselves. The output
(rows, d_out) is a Zarr array whose chunks are the blocks of ``chunk_rows`` rows: each is computed by
``fffcore.fff`` on a Dask array (:mod:`fffcore.dask_arrays`) and written whole by one task. Zarr's local
store writes a chunk to a temporary file and renames it into place, so a chunk file is either complete
or absent; an interrupted run is resumed by computing the chunks whose files are missing.

The output's attributes (``fffcore``) record the layer's hash, the input's shape and dtype and the
chunk size, so that a resumed run refuses to mix two different computations in one array, and
``complete`` once every chunk is written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fffcore.params import FFFParams
from fffcore.spec import FLOATING_DTYPES, dtype_name, is_floating

OUTPUT_FORMAT = "fffcore-apply/1"
#: Rows per chunk when neither the user nor a Zarr input's own chunks say: 64 MiB of float32 input at width 768.
DEFAULT_CHUNK_BYTES = 64 << 20
INSTALL = "pip install 'fffcore[dask]'"


class ApplyError(ValueError):
    """A bad input, output or layer found before any work is done; the message says which and why."""


def require_dask() -> None:
    """An ImportError with the fix unless Dask's array module, ``distributed`` and ``zarr`` are installed."""
    import importlib.util

    missing = [name for name in ("dask", "distributed", "zarr") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"fff apply needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: {INSTALL}"
        )


@dataclass(frozen=True)
class DiskArray:
    """A 2-D array on disk, opened lazily where it is read: pickles as its path, so a task graph stays small.

    Attributes:
        path: a Zarr array (a folder) or a ``.npy`` file.
        shape: (rows, features).
        dtype: numpy dtype name.
    """

    path: str
    shape: tuple[int, int]
    dtype: str

    @property
    def ndim(self) -> int:
        return 2

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(_opened(self.path)[index])


_OPENED: dict[str, Any] = {}


def _opened(path: str) -> Any:
    """The array at ``path``, opened once per process (a memory map for ``.npy``, read-only Zarr otherwise)."""
    array = _OPENED.get(path)
    if array is None:
        if path.endswith(".npy"):
            array = np.load(path, mmap_mode="r")
        else:
            import zarr

            array = zarr.open_array(path, mode="r")
        _OPENED[path] = array
    return array


def open_input(path: str | os.PathLike[str], params: FFFParams) -> DiskArray:
    """The input array at ``path``, checked against ``params`` (an :class:`ApplyError` when it does not fit)."""
    source = Path(path)
    if params.dtype == "bfloat16":
        raise ApplyError("layer: a bfloat16 layer cannot write a Zarr array (Zarr has no bfloat16); save it as float32")
    if not source.exists():
        raise ApplyError(f"input {source}: no such file or folder")
    try:
        if source.suffix == ".npy":
            array = np.load(source, mmap_mode="r")
        else:
            import zarr

            array = zarr.open_array(str(source), mode="r")
    except Exception as error:  # zarr and numpy raise many kinds for a file that is not theirs
        raise ApplyError(f"input {source}: not a .npy file or a Zarr array ({type(error).__name__}: {error})") from None
    shape = tuple(int(n) for n in array.shape)
    kind = dtype_name(array.dtype)
    if len(shape) != 2:
        raise ApplyError(f"input {source}: expected a 2-D array (rows, {params.d_in}), got shape {shape}")
    if shape[1] != params.d_in:
        raise ApplyError(f"input {source}: expected {params.d_in} features (the layer's d_in), got shape {shape}")
    if not is_floating(kind):
        raise ApplyError(f"input {source}: expected a floating dtype {FLOATING_DTYPES}, got {kind}")
    return DiskArray(str(source.resolve()), (shape[0], shape[1]), kind)


def default_chunk_rows(source: DiskArray) -> int:
    """The input's own row chunks for a Zarr input (each task then reads whole chunks), else 64 MiB of rows."""
    row_bytes = source.shape[1] * np.dtype(source.dtype).itemsize
    rows = DEFAULT_CHUNK_BYTES // row_bytes
    if not source.path.endswith(".npy"):
        own = int(_opened(source.path).chunks[0])
        if own * row_bytes <= 4 * DEFAULT_CHUNK_BYTES:
            rows = own
    return max(1, min(rows, source.shape[0]))


def layer_hash(params: FFFParams) -> str:
    """A hash of the layer's values and activation (the key it has in Dask graphs)."""
    from fffcore.dask_arrays import params_token

    return params_token(params)


@dataclass(frozen=True)
class Plan:
    """What a run will do: its output array, the chunks still to compute, the chunks already written."""

    output: str
    chunk_rows: int
    chunks: int
    missing: tuple[int, ...]

    @property
    def done(self) -> int:
        return self.chunks - len(self.missing)


def prepare_output(
    path: str | os.PathLike[str],
    source: DiskArray,
    params: FFFParams,
    chunk_rows: int | None,
    *,
    resume: bool,
    overwrite: bool,
    compression: bool = True,
) -> Plan:
    """Create the output array (or, with ``resume``, check the one there) and list the chunks to compute."""
    import zarr

    target = Path(path).absolute()  # workers run elsewhere: they need the full path
    record = {
        "format": OUTPUT_FORMAT,
        "layer": layer_hash(params),
        "activation": params.activation,
        "input": {"path": source.path, "shape": list(source.shape), "dtype": source.dtype},
    }
    if resume:
        if not target.exists():
            raise ApplyError(f"output {target}: --resume, but there is no output to resume; run without --resume")
        try:
            array = zarr.open_array(str(target), mode="r+")
        except Exception as error:
            raise ApplyError(f"output {target}: not a Zarr array to resume ({type(error).__name__}: {error})") from None
        stored = dict(array.attrs.get("fffcore", {}))
        if stored.get("format") != OUTPUT_FORMAT:
            raise ApplyError(f"output {target}: not written by fff apply; cannot resume it")
        for key, what in (("layer", "layer"), ("activation", "activation")):
            if stored.get(key) != record[key]:
                raise ApplyError(f"output {target}: was computed with another {what}; resume needs the same layer file")
        if stored["input"]["shape"] != record["input"]["shape"] or stored["input"]["dtype"] != source.dtype:
            raise ApplyError(
                f"output {target}: was computed from an input of shape {stored['input']['shape']} "
                f"({stored['input']['dtype']}), not {list(source.shape)} ({source.dtype})"
            )
        rows = int(stored["chunk_rows"])
        if chunk_rows is not None and chunk_rows != rows:
            raise ApplyError(f"--chunk-rows: the output was started with {rows} rows per chunk, got {chunk_rows}")
        _remove_partial_files(target)
    else:
        if target.exists() and not overwrite:
            raise ApplyError(
                f"output {target}: already exists; --resume finishes an interrupted run, --overwrite starts afresh"
            )
        if not target.parent.exists():
            raise ApplyError(f"output {target}: its folder {target.parent} does not exist")
        if not os.access(target.parent, os.W_OK):
            raise ApplyError(f"output {target}: cannot write into {target.parent}")
        rows = chunk_rows if chunk_rows is not None else default_chunk_rows(source)
        if rows < 1:
            raise ApplyError(f"--chunk-rows: expected a positive integer, got {rows}")
        array = zarr.create_array(
            str(target),
            shape=(source.shape[0], params.d_out),
            chunks=(rows, params.d_out),
            dtype=np.dtype(params.dtype),
            compressors="auto" if compression else None,
            overwrite=overwrite,
            config={"write_empty_chunks": True},  # a chunk of zeros is written too, so it counts as done
        )
        array.attrs["fffcore"] = {**record, "chunk_rows": rows, "complete": False}
    chunks = -(-source.shape[0] // rows)
    missing = tuple(i for i in range(chunks) if not (target / array.metadata.encode_chunk_key((i, 0))).exists())
    return Plan(str(target), rows, chunks, missing)


def _remove_partial_files(target: Path) -> None:
    """Temporary files of chunk writes that an interrupted run left behind (they were never renamed into place)."""
    for leftover in target.rglob("*.partial"):
        leftover.unlink(missing_ok=True)


def write_chunk(block: np.ndarray, output: str, index: int, chunk_rows: int) -> int:
    """Write ``block`` as chunk ``index`` of the output array; returns its rows."""
    import zarr

    array = zarr.open_array(output, mode="r+", config={"write_empty_chunks": True})
    start = index * chunk_rows
    array[start : start + block.shape[0]] = block
    return int(block.shape[0])


def chunk_writes(client: Any, source: DiskArray, params: FFFParams, plan: Plan, backend: str | None) -> list[Any]:
    """One Dask task per missing chunk: read its rows, run the layer, write the chunk.

    The layer is scattered to one worker first (the others fetch it from there, once each), so the
    graph sent to the scheduler carries its key, not its weights.
    """
    import dask
    import dask.array as da
    from dask.base import tokenize

    from fffcore.dask_arrays import dask_fff, params_key

    rows = da.from_array(
        source,
        chunks=(plan.chunk_rows, -1),
        name=f"fffcore-input-{tokenize(source.path, source.shape, source.dtype, os.path.getmtime(source.path))}",
        meta=np.empty((0, 0), dtype=source.dtype),
    )
    key = params_key(params)
    result = dask_fff(rows, params, backend, params_in_graph=client.scatter({key: params})[key])
    write = dask.delayed(write_chunk, pure=False)
    return [write(result.blocks[index], plan.output, index, plan.chunk_rows) for index in plan.missing]


def mark_complete(plan: Plan) -> None:
    import zarr

    array = zarr.open_array(plan.output, mode="r+")
    record = dict(array.attrs["fffcore"])
    record["complete"] = True
    array.attrs["fffcore"] = record


@dataclass(frozen=True)
class Summary:
    rows: int
    chunks_computed: int
    chunks_before: int
    seconds: float
    workers: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def run(
    client: Any,
    source: DiskArray,
    params: FFFParams,
    plan: Plan,
    backend: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Summary:
    """Compute and write every missing chunk of ``plan`` on ``client``'s cluster; raises on a failed chunk."""
    from distributed import as_completed

    started = time.perf_counter()
    futures = client.compute(chunk_writes(client, source, params, plan, backend))
    rows = 0
    for count, future in enumerate(as_completed(futures), start=1):
        rows += int(future.result())
        if progress is not None:
            progress(count, len(plan.missing))
    seconds = time.perf_counter() - started
    mark_complete(plan)
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    return Summary(rows, len(plan.missing), plan.done, seconds, workers)


def local_client(workers: int, threads_per_worker: int) -> Any:
    """A Dask client of a new cluster of worker processes on this machine, on the loopback address.

    Each worker's numba uses as many threads as the worker has, so workers do not oversubscribe the cores.
    """
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",  # a free port: several clusters may run on one machine
        env={"NUMBA_NUM_THREADS": str(threads_per_worker)},
    )
    return Client(cluster)
