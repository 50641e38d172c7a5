"""``fff apply``: run one FFF layer over an array on disk, writing Zarr, on this machine or a Dask cluster.

The machinery lives in :mod:`fffcore.apply`; this module parses arguments, checks every file before any
work starts, shows progress and prints the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from typing import Any

from fffcore.wording import counted


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="run an FFF layer over an array on disk (Zarr or .npy) and write the result to Zarr, resumably",
        description=(
            "Run one FFF layer over every row of INPUT (a Zarr array or a .npy file of shape (rows, d_in)) and "
            "write OUTPUT, a Zarr array (rows, d_out), chunk by chunk on a Dask cluster: a new one of local "
            "worker processes, or the one at --scheduler. Each output chunk is written whole or not at all; "
            "--resume computes only the chunks an interrupted run left missing."
        ),
    )
    parser.add_argument("layer", help="a layer file (FFFParams.save), or with --prefix an UltraFastBERT checkpoint")
    parser.add_argument("input", help="a Zarr array or a .npy file of shape (rows, d_in)")
    parser.add_argument("output", help="the Zarr array to write (a folder); on a cluster, a path every worker sees")
    parser.add_argument(
        "--prefix", help="read the layer under this key prefix of a state dict ('encoder.layers.0.ffn.')"
    )
    parser.add_argument("--depth", type=int, help="with --prefix: the trees' depth, where the weights do not say")
    parser.add_argument("--trees", type=int, help="with --prefix: the number of trees (UltraFastBERT's parallel_size)")
    parser.add_argument("--activation", help="with --prefix: the activation (default gelu)")
    parser.add_argument("--backend", help="the fffcore backend every chunk uses (default: chosen per chunk)")
    parser.add_argument(
        "--chunk-rows", type=int, help="rows per output chunk and task (default: the input's, or 64 MiB)"
    )
    parser.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="threads of each local worker (default 1)")
    parser.add_argument("--resume", action="store_true", help="compute only the chunks an interrupted run left missing")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an OUTPUT that fff apply wrote (nothing else is replaced)"
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="serve the local cluster's Dask dashboard on 127.0.0.1 (off by default)",
    )
    parser.add_argument("--no-compression", action="store_true", help="store the output chunks uncompressed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(arguments: argparse.Namespace) -> int:
    from fffcore import apply

    try:
        apply.require_dask()
    except ImportError as error:
        print(f"fff apply: {error}", file=sys.stderr)
        return 2
    plan = None
    try:
        try:
            params = _layer(arguments)
            _check_backend(params, arguments.backend)
            for option in ("chunk_rows", "workers", "threads_per_worker"):
                value = getattr(arguments, option)
                if value is not None and value < 1:
                    raise apply.ApplyError(f"--{option.replace('_', '-')}: expected a positive integer, got {value}")
            if arguments.resume and arguments.overwrite:
                raise apply.ApplyError("--resume and --overwrite: choose one")
            if arguments.dashboard and arguments.scheduler is not None:
                raise apply.ApplyError("--dashboard: only for the local cluster; a --scheduler serves its own")
            source = apply.open_input(arguments.input, params)
            plan = apply.prepare_output(
                arguments.output,
                source,
                params,
                arguments.chunk_rows,
                resume=arguments.resume,
                overwrite=arguments.overwrite,
                compression=not arguments.no_compression,
            )
            if not plan.missing:
                apply.mark_complete(plan)
                print(f"fff apply: nothing to do: all {counted(plan.chunks, 'chunk')} of {plan.output} are written")
                return 0
        except (ValueError, TypeError) as error:
            print(f"fff apply: {error}", file=sys.stderr)
            return 2
        return _compute(arguments, source, params, plan)
    except KeyboardInterrupt:
        if plan is None:
            print("fff apply: interrupted before any chunk was computed", file=sys.stderr)
        else:
            print(
                f"fff apply: interrupted; {apply.written_chunks(plan)} of {counted(plan.chunks, 'chunk')} are written "
                f"and kept; to continue: {_resume_command(arguments)}",
                file=sys.stderr,
            )
        return 130


def _compute(arguments: argparse.Namespace, source: Any, params: Any, plan: Any) -> int:
    """Compute the plan's missing chunks on a cluster; a Ctrl-C stops the cluster quietly and propagates."""
    from fffcore import apply

    client = None
    interrupted = False
    try:
        try:
            client = _client(arguments)
        except OSError as error:
            print(f"fff apply: cannot reach the scheduler {arguments.scheduler}: {error}", file=sys.stderr)
            return 2
        print(
            f"fff apply: {counted(source.shape[0], 'row')} in {counted(plan.chunks, 'chunk')} of "
            f"{counted(plan.chunk_rows, 'row')}"
            + (f", {plan.done} written before" if plan.done else "")
            + f"; {counted(len(client.scheduler_info(n_workers=-1)['workers']), 'worker')}"
            + (f"; dashboard {client.dashboard_link}" if arguments.dashboard else ""),
            file=sys.stderr,
        )
        try:
            summary = _run_with_progress(client, source, params, plan, arguments.backend, arguments.quiet)
        except apply.ApplyError as error:  # every chunk computed, yet a chunk file is missing
            print(f"fff apply: {error}", file=sys.stderr)
            return 1
        except Exception as error:  # a chunk failed on a worker: what is written stays written
            print(
                f"fff apply: a chunk failed ({type(error).__name__}: {error}); the chunks written so far are kept: "
                "run again with --resume",
                file=sys.stderr,
            )
            return 1
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if client is not None:
            _close(client, quiet=interrupted)
    print(
        f"fff apply: {counted(summary.rows, 'row')} ({counted(summary.chunks_computed, 'chunk')} computed, "
        f"{summary.chunks_before} written before) in {summary.seconds:.1f} s: {summary.rows_per_second:,.0f} rows/s "
        f"on {counted(summary.workers, 'worker')} -> {plan.output}"
    )
    return 0


def _resume_command(arguments: argparse.Namespace) -> str:
    """The command line that continues this run: its own arguments, with --resume for --overwrite."""
    words = ["fff", "apply", arguments.layer, arguments.input, arguments.output]
    for option in ("prefix", "depth", "trees", "activation", "backend", "scheduler", "workers"):
        value = getattr(arguments, option)
        if value is not None:
            words += [f"--{option}", str(value)]
    if arguments.threads_per_worker != 1:
        words += ["--threads-per-worker", str(arguments.threads_per_worker)]
    words += [f"--{flag}" for flag in ("dashboard", "quiet") if getattr(arguments, flag)]
    return shlex.join([*words, "--resume"])


def _layer(arguments: argparse.Namespace) -> Any:
    from fffcore.apply import ApplyError
    from fffcore.params import FFFParams

    path = arguments.layer
    if not os.path.exists(path):
        raise ApplyError(f"layer {path}: no such file")
    if arguments.prefix is None:
        for option in ("depth", "trees", "activation"):
            if getattr(arguments, option) is not None:
                raise ApplyError(f"--{option}: only with --prefix (a layer file records its own shape and activation)")
        try:
            return FFFParams.load(path)
        except ValueError as error:
            raise ApplyError(f"layer {error}") from None
    from fffcore.registry import one_line
    from fffcore.ultrafastbert import load_state_dict, params_from_state_dict

    try:
        state = load_state_dict(path)
    except ImportError as error:
        raise ApplyError(f"layer {path}: {error}") from None
    except Exception as error:  # torch, pickle and safetensors raise many kinds for a file that is not theirs
        raise ApplyError(
            f"layer {path}: not a readable checkpoint ({one_line(error)}); --prefix reads a "
            ".safetensors file or a torch.save state dict of tensors (read with weights_only: no code in it runs)"
        ) from None
    try:
        return params_from_state_dict(
            state,
            arguments.prefix,
            depth=arguments.depth,
            trees=arguments.trees,
            activation=arguments.activation or "gelu",
        )
    except (ValueError, TypeError, KeyError, RuntimeError) as error:  # a state dict without this layer in it
        raise ApplyError(f"layer {path}: {error}") from None


def _check_backend(params: Any, backend: str | None) -> None:
    """A zero-row call: every check of a real call (the backend exists and is available, takes the layer's
    dtype and activation) before a worker starts."""
    import numpy as np

    from fffcore.api import fff
    from fffcore.registry import BackendUnavailableError, UnknownBackendError

    try:
        fff(np.empty((0, params.d_in), dtype=params.dtype), params, backend=backend)
    except (UnknownBackendError, BackendUnavailableError) as error:
        raise ValueError(f"--backend: {error}") from None


def _client(arguments: argparse.Namespace) -> Any:
    from fffcore.apply import local_client

    if arguments.scheduler is not None:
        from distributed import Client

        return Client(arguments.scheduler, timeout=10)
    return local_client(
        arguments.workers or os.cpu_count() or 1, arguments.threads_per_worker, dashboard=arguments.dashboard
    )


def _close(client: Any, *, quiet: bool = False) -> None:
    """Close the client and the cluster this command started; ``quiet`` after a Ctrl-C: Dask's logs of the
    tasks it cancels and the workers it stops are not shown, nor a second Ctrl-C's traceback."""
    cluster = client.cluster  # None for a scheduler this command did not start
    try:
        if quiet:
            _silence_dask_logs()
            if cluster is not None:  # its workers write to this terminal too
                with contextlib.suppress(Exception):
                    client.run(_silence_dask_logs)
        client.close()
        if cluster is not None:
            cluster.close()
    except KeyboardInterrupt:
        if not quiet:
            raise


def _silence_dask_logs() -> None:
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _run_with_progress(client: Any, source: Any, params: Any, plan: Any, backend: Any, quiet: bool) -> Any:
    """``apply.run`` with its progress shown (unless ``quiet``), the bar ended before any message that follows."""
    from fffcore import apply
    from fffcore.commands.progress import Progress

    progress = None if quiet else Progress(sys.stderr, unit="chunk", description="fff apply")
    try:
        return apply.run(client, source, params, plan, backend, progress)
    finally:
        if progress is not None:
            progress.close()
