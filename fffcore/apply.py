"""Run one FFF layer over an array on disk and write the result to Zarr, resumably, on a Dask cluster.

The input (rows, d_in) is a Zarr array or a ``.npy`` file, read by the workers themselves. The output
(rows, d_out) is a Zarr array whose chunks are the blocks of ``chunk_rows`` rows: each is computed by
``fffcore.fff`` on a Dask array (:mod:`fffcore.dask_arrays`) and written whole by one task. Zarr's local
store writes a chunk to a temporary file and renames it into place, so a chunk file is either complete
or absent; an interrupted run is resumed by computing the chunks whose files are missing.

The output's attributes (``fffcore``) record the layer's hash, the input's shape, dtype and
fingerprint (:func:`input_fingerprint`) and the chunk size, so that a resumed run refuses to mix two
different computations in one array, and ``complete`` once every chunk is checked to be written.
``--overwrite`` replaces only an output these attributes say ``fff apply`` wrote, and removes only the
files it writes there; no output may be, contain or lie inside the input.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fffcore.params import FFFParams
from fffcore.spec import FLOATING_DTYPES, dtype_name, is_floating

OUTPUT_FORMAT = "fffcore-apply/2"
#: Every format an output of fff apply has had (1: no input fingerprint), recognised by ``--overwrite``.
KNOWN_FORMATS = ("fffcore-apply/1", OUTPUT_FORMAT)
#: Rows of the input hashed into its fingerprint, evenly spread from the first row to the last.
FINGERPRINT_ROWS = 16
#: Virtual file systems that hold no files: an output there is refused.
VIRTUAL_FILE_SYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))
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
            array = np.load(source, mmap_mode="r", allow_pickle=False)
        else:
            import zarr

            array = zarr.open_array(str(source), mode="r")
    except Exception as error:  # zarr and numpy raise many kinds for a file that is not theirs
        raise ApplyError(f"input {source}: not a .npy file or a Zarr array ({type(error).__name__}: {error})") from None
    if not hasattr(array, "shape"):  # np.load opens a .npz archive whatever its name
        if hasattr(array, "close"):
            array.close()
        raise ApplyError(
            f"input {source}: a .npz archive named .npy, not a .npy file; save the array itself with np.save "
            "(np.load(path)[name] gives it back from the archive)"
        )
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


def input_fingerprint(source: DiskArray) -> dict[str, Any]:
    """What identifies the input's contents: its bytes on disk, latest modification and a digest of sampled rows.

    ``size`` is the bytes of the file (or of every file of a Zarr folder), ``mtime_ns`` the latest
    modification time among them, ``digest`` a SHA-256 of the shape, the dtype and the values of
    :data:`FINGERPRINT_ROWS` rows spread evenly from the first to the last. The input is opened anew
    (not through a cached memory map), so a file replaced since is read as it is now.
    """
    import zarr

    path = Path(source.path)
    if path.is_dir():
        stats = [Path(folder, name).stat() for folder, _, names in os.walk(path) for name in names]
        array: Any = zarr.open_array(str(path), mode="r")
    else:
        stats = [path.stat()]
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    rows = source.shape[0]
    sampled = sorted({int(i) for i in np.linspace(0, rows - 1, min(rows, FINGERPRINT_ROWS))}) if rows else []
    digest = hashlib.sha256(json.dumps([list(source.shape), source.dtype]).encode())
    for row in sampled:
        digest.update(np.ascontiguousarray(array[row]).tobytes())
    return {
        "size": sum(stat.st_size for stat in stats),
        "mtime_ns": max((stat.st_mtime_ns for stat in stats), default=0),
        "rows": sampled,
        "digest": digest.hexdigest(),
    }


def _check_output_path(target: Path, source: DiskArray) -> None:
    """Refuse an output that is a symbolic link, a file, on a virtual file system, or overlaps the input."""
    if target.is_symlink():
        raise ApplyError(
            f"output {target}: is a symbolic link (to {os.readlink(target)}); give the path of the folder itself"
        )
    if target.exists() and not target.is_dir():
        raise ApplyError(f"output {target}: is a file, not a Zarr array (a folder); choose another output path")
    real = target.resolve()  # symlinks of its folders followed
    for system in VIRTUAL_FILE_SYSTEMS:
        if real == system or system in real.parents:
            raise ApplyError(
                f"output {target}: lies on {system}, a virtual file system that holds no files; "
                "write to a folder on a disk"
            )
    real_input = Path(source.path).resolve()
    if real == real_input:
        where = "is the input itself"
    elif real_input in real.parents:
        where = f"lies inside the input {real_input}"
    elif real in real_input.parents:
        where = f"contains the input {real_input}"
    else:
        return
    raise ApplyError(f"output {target}: {where}; write the output to a path outside the input")


def _output_record(target: Path) -> dict[str, Any] | None:
    """The ``fffcore`` attributes of the Zarr array at ``target`` if fff apply wrote it, else None."""
    try:
        metadata = json.loads((target / "zarr.json").read_text())
        record = metadata["attributes"]["fffcore"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) and record.get("format") in KNOWN_FORMATS else None


def _remove_own_output(target: Path) -> None:
    """Remove the output fff apply wrote at ``target``: its metadata and chunk files, nothing else.

    Refuses (before removing anything) a folder fff apply did not write, or one that holds anything
    besides what fff apply writes there (``zarr.json``, ``c/I/0`` chunk files, ``*.partial`` temporaries).
    """
    if _output_record(target) is None:
        raise ApplyError(
            f"output {target}: exists and is not an output of fff apply (no fffcore attributes in its "
            "zarr.json); --overwrite replaces only what fff apply wrote: move it away or choose another output"
        )
    files: list[Path] = []
    folders: list[Path] = []
    foreign: list[Path] = []
    for folder, subfolders, names in os.walk(target):
        here = Path(folder)
        depth = len(here.relative_to(target).parts)
        descend = []
        for name in subfolders:
            entry = here / name
            own = not entry.is_symlink() and (
                (depth == 0 and name == "c") or (depth == 1 and here.name == "c" and name.isdigit())
            )
            (folders if own else foreign).append(entry)
            if own:
                descend.append(name)
        subfolders[:] = descend  # not into what it did not write
        for name in names:
            entry = here / name
            parts = entry.relative_to(target).parts
            own = not entry.is_symlink() and (
                parts == ("zarr.json",)
                or (len(parts) == 3 and parts[0] == "c" and parts[1].isdigit() and parts[2] == "0")
                or (parts[0] == "c" and name.endswith(".partial"))
            )
            (files if own else foreign).append(entry)
    if foreign:
        raise ApplyError(
            f"output {target}: --overwrite replaces only what fff apply wrote, and this folder also holds "
            f"{len(foreign)} other entr{'y' if len(foreign) == 1 else 'ies'} ({foreign[0].relative_to(target)}"
            f"{', ...' if len(foreign) > 1 else ''}); move them away or choose another output"
        )
    for entry in files:
        entry.unlink()
    for entry in sorted(folders, key=lambda folder: len(folder.parts), reverse=True):
        entry.rmdir()
    target.rmdir()


def _checked_record(stored: Any, target: Path, array: Any) -> dict[str, Any]:
    """The resume attributes of an output, each checked for its type and against the array's own metadata."""
    if not isinstance(stored, dict) or stored.get("format") not in KNOWN_FORMATS:
        raise ApplyError(f"output {target}: not written by fff apply; cannot resume it")
    if stored["format"] != OUTPUT_FORMAT:
        raise ApplyError(
            f"output {target}: started by an earlier fff apply that did not record which input it read, so "
            "resuming it could mix two inputs; start afresh with --overwrite"
        )

    def number(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    source = stored.get("input")
    fingerprint = source.get("fingerprint") if isinstance(source, dict) else None
    checks = {
        "layer": isinstance(stored.get("layer"), str),
        "activation": isinstance(stored.get("activation"), str),
        "input": isinstance(source, dict),
        "input.shape": isinstance(source, dict)
        and isinstance(source.get("shape"), list)
        and len(source["shape"]) == 2
        and all(number(n) for n in source["shape"]),
        "input.dtype": isinstance(source, dict) and isinstance(source.get("dtype"), str),
        "input.fingerprint": isinstance(fingerprint, dict)
        and number(fingerprint.get("size"))
        and number(fingerprint.get("mtime_ns"))
        and isinstance(fingerprint.get("digest"), str),
        "chunk_rows": number(stored.get("chunk_rows")) and stored["chunk_rows"] > 0,
        "complete": isinstance(stored.get("complete"), bool),
    }
    damaged = [key for key, good in checks.items() if not good]
    if not damaged:
        rows = source["shape"][0]
        width = array.shape[1] if array.ndim == 2 else None  # the layer's d_out: checked with the layer's hash
        if tuple(array.shape) != (rows, width) or tuple(array.chunks) != (stored["chunk_rows"], width):
            damaged.append(
                f"chunk_rows {stored['chunk_rows']} and input rows {rows} do not match the array's shape "
                f"{tuple(array.shape)} and chunks {tuple(array.chunks)}"
            )
    if damaged:
        raise ApplyError(
            f"output {target}: its fffcore attributes are missing or damaged ({', '.join(damaged)}), so it cannot "
            "be resumed safely; start afresh with --overwrite"
        )
    return stored


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
    """Create the output array (or, with ``resume``, check the one there) and list the chunks to compute.

    Raises :class:`ApplyError`, before anything is written, for an output that overlaps the input, is a
    file, a symbolic link or on a virtual file system; without ``resume`` for an existing output unless
    ``overwrite`` and fff apply wrote it; with ``resume`` for an output of another layer or input.
    """
    import zarr

    target = Path(path).absolute()  # workers run elsewhere: they need the full path
    _check_output_path(target, source)
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
        stored = _checked_record(array.attrs.get("fffcore"), target, array)
        for key, what in (("layer", "layer"), ("activation", "activation")):
            if stored.get(key) != record[key]:
                raise ApplyError(f"output {target}: was computed with another {what}; resume needs the same layer file")
        if stored["input"]["shape"] != record["input"]["shape"] or stored["input"]["dtype"] != source.dtype:
            raise ApplyError(
                f"output {target}: was computed from an input of shape {stored['input']['shape']} "
                f"({stored['input']['dtype']}), not {list(source.shape)} ({source.dtype})"
            )
        before, now = stored["input"]["fingerprint"], input_fingerprint(source)
        changed = [
            what
            for key, what in (
                ("size", "its size"),
                ("digest", "the values of sampled rows"),
                ("mtime_ns", "its time of last change"),
            )
            if before.get(key) != now[key]
        ]
        if changed:
            raise ApplyError(
                f"output {target}: was computed from another input than {source.path} as it is now "
                f"({', '.join(changed)} differ{'s' if len(changed) == 1 else ''}; it was read from "
                f"{stored['input'].get('path')}); resume with that input unchanged, or start afresh with --overwrite"
            )
        rows = int(stored["chunk_rows"])
        if chunk_rows is not None and chunk_rows != rows:
            raise ApplyError(f"--chunk-rows: the output was started with {rows} rows per chunk, got {chunk_rows}")
        _remove_partial_files(target)
    else:
        if os.path.lexists(target) and not overwrite:
            raise ApplyError(
                f"output {target}: already exists; --resume finishes an interrupted run, --overwrite replaces an "
                "output of fff apply"
            )
        if not target.parent.is_dir():
            raise ApplyError(f"output {target}: its folder {target.parent} does not exist")
        if not os.access(target.parent, os.W_OK):
            raise ApplyError(f"output {target}: cannot write into {target.parent}")
        rows = chunk_rows if chunk_rows is not None else default_chunk_rows(source)
        if rows < 1:
            raise ApplyError(f"--chunk-rows: expected a positive integer, got {rows}")
        fingerprint = input_fingerprint(source)
        if target.exists():
            _remove_own_output(target)
        try:
            array = zarr.create_array(
                str(target),
                shape=(source.shape[0], params.d_out),
                chunks=(rows, params.d_out),
                dtype=np.dtype(params.dtype),
                compressors="auto" if compression else None,
                config={"write_empty_chunks": True},  # a chunk of zeros is written too, so it counts as done
            )
            array.attrs["fffcore"] = {
                **record,
                "input": {**record["input"], "fingerprint": fingerprint},
                "chunk_rows": rows,
                "complete": False,
            }
        except OSError as error:
            raise ApplyError(f"output {target}: cannot create it ({type(error).__name__}: {error})") from None
    chunks = -(-source.shape[0] // rows)
    return Plan(str(target), rows, chunks, _missing_chunks(target, array, chunks))


def written_chunks(plan: Plan) -> int:
    """How many of the output's chunks have their files now."""
    import zarr

    array = zarr.open_array(plan.output, mode="r")
    return plan.chunks - len(_missing_chunks(Path(plan.output), array, plan.chunks))


def _missing_chunks(target: Path, array: Any, chunks: int) -> tuple[int, ...]:
    """The chunks of the output whose files are absent."""
    return tuple(i for i in range(chunks) if not (target / array.metadata.encode_chunk_key((i, 0))).is_file())


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
    """Set the output's ``complete`` attribute, once every one of its chunk files is checked to be there."""
    import zarr

    array = zarr.open_array(plan.output, mode="r+")
    missing = _missing_chunks(Path(plan.output), array, plan.chunks)
    if missing:
        raise ApplyError(
            f"output {plan.output}: {len(missing)} of {plan.chunks} chunks are missing (chunk {missing[0]} first), "
            "so it is not marked complete; run again with --resume"
        )
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


def local_client(workers: int, threads_per_worker: int, *, dashboard: bool = False) -> Any:
    """A Dask client of a new cluster of worker processes on this machine, listening on 127.0.0.1 only.

    Each worker's numba uses as many threads as the worker has, so workers do not oversubscribe the cores.
    The scheduler's dashboard is off unless ``dashboard`` (then on a free port of 127.0.0.1). The worker
    processes ignore SIGINT, so a Ctrl-C at the terminal reaches only the command, which stops them itself.
    """
    import signal
    import threading

    from distributed import Client, LocalCluster

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:  # the workers are new processes: they inherit the ignored SIGINT
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server, on a free port: several clusters may run
            scheduler_kwargs={"dashboard": dashboard},  # without it, that server answers only /health and such
            env={"NUMBA_NUM_THREADS": str(threads_per_worker)},
        )
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    return Client(cluster)
