"""``fff apply``: a layer over an array on disk into Zarr, on a Dask cluster, resumable, checked before work."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fffcore
from fffcore.cli import main

from .blocking_backend import plugin_environment
from .test_dask_cluster import params_fetches

zarr = pytest.importorskip("zarr", reason="fff apply needs zarr: pip install 'fffcore[dask]'")
pytest.importorskip("distributed", reason="fff apply needs distributed: pip install 'fffcore[dask]'")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A layer file, its input as .npy and as Zarr (chunks of 700 rows), in ``tmp_path``."""
    layer = fffcore.FFFParams.random(d_in=32, d_out=24, depth=6, trees=2, seed=5)
    layer.save(tmp_path / "layer.safetensors")
    rows = np.random.default_rng(6).standard_normal((5000, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", rows)
    stored = zarr.create_array(str(tmp_path / "x.zarr"), shape=rows.shape, chunks=(700, 32), dtype="float32")
    stored[:] = rows
    return {"layer": tmp_path / "layer.safetensors", "npy": tmp_path / "x.npy", "zarr": tmp_path / "x.zarr"}


def expected_output(files: dict[str, Path], backend: str | None = None) -> np.ndarray:
    return fffcore.fff(np.load(files["npy"]), fffcore.FFFParams.load(files["layer"]), backend=backend)


@pytest.mark.parametrize("source", ["npy", "zarr"])
def test_apply_writes_the_layer_output_to_zarr(files, tmp_path, dask_client, source, capsys):
    out = tmp_path / "y.zarr"
    arguments = ["apply", str(files["layer"]), str(files[source]), str(out)]
    arguments += ["--scheduler", dask_client.scheduler.address]
    before = params_fetches(dask_client)
    assert main([*arguments, "--backend", "reference", "--quiet"]) == 0
    after = params_fetches(dask_client)
    assert all(after[w] - before.get(w, 0) <= 1 for w in after), (before, after)  # the layer once per worker
    written = zarr.open_array(str(out), mode="r")
    np.testing.assert_array_equal(written[:], expected_output(files, "reference"))
    assert written.chunks[0] == (700 if source == "zarr" else written.shape[0])  # a Zarr input's own row chunks
    record = written.attrs["fffcore"]
    assert record["complete"] is True and record["input"]["shape"] == [5000, 32]
    summary = capsys.readouterr().out
    assert re.search(
        r"5000 rows \(\d+ chunks computed, 0 written before\) in [\d.]+ s: [\d,]+ rows/s on 2 workers", summary
    ), summary


def test_apply_on_its_own_local_cluster_with_a_progress_line_per_step(files, tmp_path, capsys):
    out = tmp_path / "y.zarr"
    arguments = [str(files["layer"]), str(files["npy"]), str(out), "--chunk-rows", "400", "--workers", "1"]
    assert main(["apply", *arguments]) == 0
    captured = capsys.readouterr()
    assert "13/13 chunks" in captured.err and "on 1 workers" in captured.out
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], expected_output(files))


def test_apply_reads_one_layer_of_an_ultrafastbert_state_dict(files, tmp_path, dask_client):
    torch = pytest.importorskip("torch", reason="reading a .pt state dict needs torch")
    from fffcore.ultrafastbert import state_dict_from_params

    layer = fffcore.FFFParams.load(files["layer"]).with_activation("gelu")
    single = fffcore.FFFParams(layer.w_in[:1], layer.b_in[:1], layer.w_out[:1])  # UltraFastBERT-1xD: one tree
    torch.save(state_dict_from_params(single, "encoder.layers.3.ffn.", as_torch=True), tmp_path / "model.pt")
    out = tmp_path / "y.zarr"
    arguments = [str(tmp_path / "model.pt"), str(files["npy"]), str(out), "--prefix", "encoder.layers.3.ffn."]
    assert main(["apply", *arguments, "--depth", "6", "--scheduler", dask_client.scheduler.address, "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], fffcore.fff(np.load(files["npy"]), single))


def chunk_files(out: Path) -> dict[str, int]:
    """The output's chunk files and their inode numbers (a rewritten chunk gets a new inode: written then renamed)."""
    return {str(p.relative_to(out)): p.stat().st_ino for p in (out / "c").rglob("*") if p.is_file()}


def test_resume_after_a_run_killed_half_way_computes_only_the_missing_chunks(files, tmp_path, dask_client):
    out = tmp_path / "y.zarr"
    # A run of 40 chunks on one single-threaded worker, in its own process group. Its backend (the
    # reference under the name "blocking") stops for good on the first call made once 8 chunks are
    # written: from then on nothing runs, so the output is known when the run is killed.
    marker = tmp_path / "blocked"
    environment = plugin_environment(tmp_path / "plugin", watched=out / "c", after_files=8, marker=marker)
    command = [sys.executable, "-m", "fffcore.cli", "apply", str(files["layer"]), str(files["npy"]), str(out)]
    with open(tmp_path / "killed-run.log", "w+") as log:
        run = subprocess.Popen(
            [*command, "--chunk-rows", "125", "--workers", "1", "--threads-per-worker", "1", "--backend", "blocking"],
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        deadline = time.monotonic() + 120  # a guard against a run that never blocks, not the kill point
        while not marker.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        blocked = marker.exists()
        with contextlib.suppress(ProcessLookupError):  # all gone already: a run that ended, reported below
            os.killpg(run.pid, signal.SIGKILL)  # the command and its cluster's processes, at once
        run.wait(timeout=30)
        log.seek(0)
        assert blocked, f"the run never blocked (exit status {run.returncode}):\n{log.read()[-3000:]}"
    before = chunk_files(out)
    assert 8 <= len(before) < 40, f"not stopped half-way: {len(before)} of 40 chunks"
    assert zarr.open_array(str(out), mode="r").attrs["fffcore"]["complete"] is False

    finished = subprocess.run(
        [*command, "--resume", "--backend", "reference", "--scheduler", dask_client.scheduler.address, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    counts = re.search(r"\((\d+) chunks computed, (\d+) written before\)", finished.stdout)
    assert counts is not None, finished.stdout
    assert (int(counts.group(1)), int(counts.group(2))) == (40 - len(before), len(before))
    after = chunk_files(out)
    assert len(after) == 40
    assert all(after[name] == inode for name, inode in before.items())  # the chunks written before stayed as they were
    assert not list(out.rglob("*.partial"))
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], expected_output(files, "reference"))
    assert zarr.open_array(str(out), mode="r").attrs["fffcore"]["complete"] is True
    # Nothing left: a third run says so and computes nothing.
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0 and "nothing to do: all 40 chunks" in again.stdout


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a cluster is started or a chunk computed."""
    from fffcore import apply
    from fffcore.commands import apply as command

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(command, "_client", refuse)
    monkeypatch.setattr(apply, "run", refuse)


def test_bad_input_output_or_layer_files_are_refused_before_any_work(files, tmp_path, no_work, capsys):
    layer, npy = str(files["layer"]), str(files["npy"])
    np.save(tmp_path / "narrow.npy", np.zeros((10, 31), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((10, 32), np.int32))
    np.save(tmp_path / "cube.npy", np.zeros((2, 10, 32), np.float32))
    (tmp_path / "exists.zarr").mkdir()
    other = tmp_path / "other.safetensors"
    fffcore.FFFParams.random(d_in=32, d_out=24, depth=6, trees=2, seed=99).save(other)
    started = tmp_path / "started.zarr"
    from fffcore import apply

    apply.prepare_output(
        started,
        apply.open_input(npy, fffcore.FFFParams.load(layer)),
        fffcore.FFFParams.load(layer),
        1000,
        resume=False,
        overwrite=False,
    )
    cases = [
        ([layer, str(tmp_path / "missing.npy"), "o.zarr"], "input .*missing.npy: no such file"),
        ([layer, str(tmp_path / "narrow.npy"), "o.zarr"], "expected 32 features"),
        ([layer, str(tmp_path / "ints.npy"), "o.zarr"], "expected a floating dtype"),
        ([layer, str(tmp_path / "cube.npy"), "o.zarr"], "expected a 2-D array"),
        ([layer, layer, "o.zarr"], "not a .npy file or a Zarr array"),
        ([npy, npy, "o.zarr"], "not a safetensors file"),
        ([str(tmp_path / "none.safetensors"), npy, "o.zarr"], "layer .*none.safetensors: no such file"),
        ([layer, npy, str(tmp_path / "exists.zarr")], "already exists; --resume"),
        ([layer, npy, str(tmp_path / "no" / "o.zarr")], "does not exist"),
        ([layer, npy, str(tmp_path / "fresh.zarr"), "--resume"], "no output to resume"),
        ([str(other), npy, str(started), "--resume"], "computed with another layer"),
        ([layer, npy, str(started), "--resume", "--chunk-rows", "7"], "started with 1000 rows per chunk"),
        ([layer, npy, "o.zarr", "--backend", "nonesuch"], "--backend: unknown backend 'nonesuch'"),
        ([layer, npy, "o.zarr", "--depth", "3"], "--depth: only with --prefix"),
        ([layer, npy, "o.zarr", "--chunk-rows", "0"], "--chunk-rows: expected a positive integer, got 0"),
    ]
    for arguments, message in cases:
        assert main(["apply", *arguments]) == 2, arguments
        error = capsys.readouterr().err
        assert re.search(message, error), (arguments, error)
    assert not (tmp_path / "fresh.zarr").exists() and not Path("o.zarr").exists()


def test_without_dask_apply_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name, *a))
    assert main(["apply", "layer", "x.npy", "y.zarr"]) == 2
    assert "fff apply needs distributed, which is not installed: pip install 'fffcore[dask]'" in capsys.readouterr().err
