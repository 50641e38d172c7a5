"""``fff apply`` throughput: rows/s with 1 and 2 workers, against the backend called in one process.

    python -m benchmarks.studies.apply_bench                  # width 768, depth 11, 2,000,000 rows (12 GiB of disk)
    python -m benchmarks.studies.apply_bench --rows 50000 --json apply.json

Writes an input Zarr array of float32 rows (uncompressed, 16,384 rows per chunk) and a layer file in
``--dir``, then, each on the same rows and chunks:

1. ``backend``: the backend called on each chunk in this process, from rows already in memory: the
   compute alone, the floor every other figure is compared with;
2. ``one process``: a plain loop in this process that reads each chunk from the input, calls the
   backend and writes the output chunk: the same work as ``fff apply`` without Dask;
3. ``fff apply`` on a local cluster of 1 and of 2 worker processes (1 thread each): the command as
   users run it, from graph building to the last chunk written (cluster start-up excluded; it is
   reported separately).

The backend runs on 1 thread in 1 and 2, as each worker's does in 3, so that "2 workers" is the
only use of a second core. Every output is checked equal to the in-process result. Outputs are
uncompressed, so the figures are compute and the disk, not a compressor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fffcore.benchmarks.timing import WALL, seconds_per_call

CHUNK_ROWS = 16384


def make_input(directory: Path, rows: int, width: int, seed: int = 0) -> Path:
    """A float32 Zarr array (rows, width) of standard normal values, written chunk by chunk."""
    import zarr

    path = directory / "input.zarr"
    array = zarr.create_array(
        str(path), shape=(rows, width), chunks=(CHUNK_ROWS, width), dtype="float32", compressors=None, overwrite=True
    )
    rng = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(rows, start + CHUNK_ROWS)
        array[start:stop] = rng.standard_normal((stop - start, width), dtype=np.float32)
    return path


def time_backend(source: Any, params: Any, backend: str) -> float:
    """Seconds of backend calls alone over every chunk (rows read beforehand, outside the timing)."""
    import fffcore

    total = 0.0
    for start in range(0, source.shape[0], CHUNK_ROWS):
        rows = np.ascontiguousarray(source[start : start + CHUNK_ROWS])
        total += seconds_per_call(lambda rows=rows: fffcore.fff(rows, params, backend=backend))
    return total


def time_one_process(source: Any, params: Any, backend: str, output: Path) -> float:
    """Seconds of a plain loop that reads each chunk, calls the backend and writes the output chunk."""
    import zarr

    import fffcore

    began = WALL.start()
    out = zarr.create_array(
        str(output),
        shape=(source.shape[0], params.d_out),
        chunks=(CHUNK_ROWS, params.d_out),
        dtype=params.dtype,
        compressors=None,
        overwrite=True,
    )
    for start in range(0, source.shape[0], CHUNK_ROWS):
        rows = np.asarray(source[start : start + CHUNK_ROWS])
        out[start : start + CHUNK_ROWS] = fffcore.fff(rows, params, backend=backend)
    return WALL.stop(began)


def time_apply(layer: Path, source: Path, output: Path, workers: int, backend: str) -> dict[str, float]:
    """``fff apply`` on a new local cluster of ``workers`` processes: start-up and run seconds."""
    from fffcore import apply
    from fffcore.params import FFFParams

    params = FFFParams.load(layer)
    disk = apply.open_input(source, params)
    began = WALL.start()
    client = apply.local_client(workers, threads_per_worker=1)
    client.run(_warm, str(layer), backend)  # load the compiled kernels, as any long run amortises
    started = WALL.stop(began)
    try:
        plan = apply.prepare_output(output, disk, params, CHUNK_ROWS, resume=False, overwrite=True, compression=False)
        summary = apply.run(client, disk, params, plan, backend)
        peaks = client.run(_peak_resident_bytes)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    return {
        "startup_s": started,
        "seconds": summary.seconds,
        "workers": summary.workers,
        "peak_worker_memory_bytes": max(peaks.values()),
    }


def _peak_resident_bytes() -> int:
    """This process's peak resident memory (Linux reports kibibytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _warm(layer: str, backend: str) -> None:
    import fffcore

    params = fffcore.FFFParams.load(layer)
    fffcore.fff(np.zeros((CHUNK_ROWS, params.d_in), params.dtype), params, backend=backend)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.apply_bench", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=11)
    parser.add_argument("--backend", default="numba")
    parser.add_argument(
        "--dir", help="scratch folder for the input and outputs (default: a temporary one, removed after)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    arguments = parser.parse_args(argv)
    os.environ["NUMBA_NUM_THREADS"] = "1"  # before numba is imported: this process's calls run on 1 thread
    import zarr

    import fffcore
    from fffcore.benchmarks.machine import cpu_model

    scratch = Path(arguments.dir) if arguments.dir else Path(tempfile.mkdtemp(prefix="fff-apply-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        params = fffcore.FFFParams.random(arguments.width, arguments.width, depth=arguments.depth, seed=0)
        layer = scratch / "layer.safetensors"
        params.save(layer)
        print(f"writing {arguments.rows} x {arguments.width} float32 rows to {scratch}", file=sys.stderr)
        source_path = make_input(scratch, arguments.rows, arguments.width)
        source = zarr.open_array(str(source_path), mode="r")
        _warm(str(layer), arguments.backend)
        rows = arguments.rows
        results: dict[str, Any] = {}
        results["backend"] = {"seconds": time_backend(source, params, arguments.backend)}
        reference_out = scratch / "one-process.zarr"
        results["one process"] = {"seconds": time_one_process(source, params, arguments.backend, reference_out)}
        expected = zarr.open_array(str(reference_out), mode="r")
        for workers in (1, 2):
            output = scratch / f"apply-{workers}.zarr"
            timing = time_apply(layer, source_path, output, workers, arguments.backend)
            results[f"fff apply, {workers} workers"] = timing
            written = zarr.open_array(str(output), mode="r")
            for start in range(0, rows, CHUNK_ROWS):
                if not np.array_equal(written[start : start + CHUNK_ROWS], expected[start : start + CHUNK_ROWS]):
                    raise AssertionError(f"fff apply with {workers} workers wrote other values at rows {start}..")
            shutil.rmtree(output)
        floor = results["backend"]["seconds"]
        print(f"width {arguments.width}, depth {arguments.depth}, {rows} rows, {arguments.backend}, {cpu_model()}")
        for name, result in results.items():
            result["rows_per_second"] = rows / result["seconds"]
            result["over_backend"] = result["seconds"] / floor
            extra = ""
            if "startup_s" in result:
                extra = (
                    f"  (cluster start-up {result['startup_s']:.1f} s; peak worker memory "
                    f"{result['peak_worker_memory_bytes'] / 2**20:.0f} MiB)"
                )
            print(
                f"  {name:24} {result['seconds']:8.2f} s  {result['rows_per_second']:>12,.0f} rows/s  "
                f"{result['over_backend']:5.2f}x the backend's time{extra}"
            )
        if arguments.json:
            record = {
                "rows": rows,
                "width": arguments.width,
                "depth": arguments.depth,
                "backend": arguments.backend,
                "chunk_rows": CHUNK_ROWS,
                "cpu": cpu_model(),
                "logical_cpus": os.cpu_count(),
                "results": results,
            }
            Path(arguments.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {arguments.json}")
    finally:
        if not arguments.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
