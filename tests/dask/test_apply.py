"""``fff apply``: a layer over an array on disk into Zarr, on a Dask cluster, resumable, checked before work."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
        r"5000 rows \(\d+ chunks? computed, 0 written before\) in [\d.]+ s: [\d,]+ rows/s on 2 workers", summary
    ), summary


def test_apply_on_its_own_local_cluster_with_its_progress_in_the_log(files, tmp_path, capsys):
    out = tmp_path / "y.zarr"
    arguments = [str(files["layer"]), str(files["npy"]), str(out), "--chunk-rows", "400", "--workers", "1"]
    assert main(["apply", *arguments]) == 0
    captured = capsys.readouterr()
    assert "13/13 chunks" in captured.err and "on 1 worker " in captured.out
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
    counts = re.search(r"\((\d+) chunks? computed, (\d+) written before\)", finished.stdout)
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


def started_output(files: dict[str, Path], out: Path, chunk_rows: int = 1000) -> Any:
    """An output of fff apply as an interrupted run leaves it: created, no chunk written; returns its plan."""
    from fffcore import apply

    layer = fffcore.FFFParams.load(files["layer"])
    source = apply.open_input(files["npy"], layer)
    return apply.prepare_output(out, source, layer, chunk_rows, resume=False, overwrite=False)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_what_fff_apply_did_not_write_and_any_output_overlapping_the_input(
    files, tmp_path, no_work, capsys
):
    layer, npy = str(files["layer"]), str(files["npy"])
    unrelated = tmp_path / "photos"
    (unrelated / "2024").mkdir(parents=True)
    (unrelated / "a.jpg").write_bytes(b"a")
    (unrelated / "2024" / "b.jpg").write_bytes(b"b")
    mixed = tmp_path / "mixed.zarr"
    started_output(files, mixed)
    (mixed / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    inside = tmp_path / "data" / "x.npy"
    inside.write_bytes(files["npy"].read_bytes())
    (tmp_path / "here").symlink_to(tmp_path)  # a folder's symlink: the output below it is the input itself
    (tmp_path / "link.zarr").symlink_to(unrelated)
    before = {path: tree(path) for path in (unrelated, files["zarr"], tmp_path / "data", mixed)}
    both = ("--overwrite", "--resume")  # an output that overlaps the input is refused either way
    cases = [
        ([layer, npy, str(unrelated)], ("--overwrite",), "not an output of fff apply .*--overwrite replaces only"),
        ([layer, npy, str(mixed)], ("--overwrite",), r"also holds 1 other entry \(notes.txt\); move them away"),
        ([layer, str(files["zarr"]), str(files["zarr"])], both, "is the input itself; write the output to a path"),
        ([layer, str(files["zarr"]), str(tmp_path / "here" / "x.zarr")], both, "is the input itself"),
        ([layer, str(files["zarr"]), str(files["zarr"] / "y.zarr")], both, "lies inside the input"),
        ([layer, str(inside), str(tmp_path / "data")], both, "contains the input"),
        ([layer, npy, str(tmp_path / "link.zarr")], both, "is a symbolic link"),
    ]
    for arguments, flags, message in cases:
        for flag in flags:
            assert main(["apply", *arguments, flag]) == 2, (arguments, flag)
            error = capsys.readouterr().err
            assert re.search(message, error) and len(error.strip().splitlines()) == 1, (arguments, flag, error)
    assert {path: tree(path) for path in before} == before  # nothing deleted, nothing written


def test_overwrite_replaces_an_output_of_fff_apply(files, tmp_path, dask_client, capsys):
    out = tmp_path / "y.zarr"
    started_output(files, out, chunk_rows=300)
    arguments = [str(files["layer"]), str(files["npy"]), str(out), "--scheduler", dask_client.scheduler.address]
    assert main(["apply", *arguments, "--backend", "reference", "--quiet", "--overwrite"]) == 0, capsys.readouterr()
    written = zarr.open_array(str(out), mode="r")
    assert written.chunks[0] == 5000 and written.attrs["fffcore"]["complete"] is True
    np.testing.assert_array_equal(written[:], expected_output(files, "reference"))


def test_resume_refuses_another_input_and_damaged_attributes(files, tmp_path, no_work, capsys):
    out = tmp_path / "y.zarr"
    started_output(files, out)
    layer, npy = str(files["layer"]), str(files["npy"])
    original = np.load(npy)
    other = original.copy()
    other[2500, 7] += 1  # one value of one row: caught by the time of change, even where no sampled row holds it
    np.save(tmp_path / "other.npy", other)
    assert main(["apply", layer, str(tmp_path / "other.npy"), str(out), "--resume"]) == 2
    assert re.search(
        r"computed from another input than .*other.npy .*start afresh with --overwrite", capsys.readouterr().err
    )
    np.save(npy, original[::-1].copy())  # the same path, shape and dtype, other values
    assert main(["apply", layer, npy, str(out), "--resume"]) == 2
    assert "the values of sampled rows" in capsys.readouterr().err
    np.save(npy, original)
    os.utime(npy, ns=(0, zarr.open_array(str(out), mode="r").attrs["fffcore"]["input"]["fingerprint"]["mtime_ns"]))
    from fffcore import apply

    params = fffcore.FFFParams.load(layer)
    plan = apply.prepare_output(out, apply.open_input(npy, params), params, None, resume=True, overwrite=False)
    assert plan.missing == tuple(range(5))  # the input as it was: resumed

    good = dict(zarr.open_array(str(out), mode="r").attrs["fffcore"])
    damages = {
        "chunk_rows": lambda record: record.pop("chunk_rows"),
        "input": lambda record: record.pop("input"),
        "input.fingerprint": lambda record: record.__setitem__("input", {**record["input"], "fingerprint": None}),
        "layer": lambda record: record.__setitem__("layer", 5),
    }
    for key, damage in {**damages, "do not match": lambda record: record.__setitem__("chunk_rows", 1)}.items():
        record = {**good, "input": dict(good["input"])}
        damage(record)
        zarr.open_array(str(out), mode="r+").attrs["fffcore"] = record
        assert main(["apply", layer, npy, str(out), "--resume"]) == 2, key
        error = capsys.readouterr().err
        assert "fffcore attributes are missing or damaged" in error and key in error, (key, error)
        assert "start afresh with --overwrite" in error
    assert not (out / "c").exists()  # nothing computed, nothing marked


def test_an_output_is_marked_complete_only_with_every_chunk_written(files, tmp_path):
    from fffcore import apply

    plan = started_output(files, tmp_path / "y.zarr")
    with pytest.raises(apply.ApplyError, match="5 of 5 chunks are missing"):
        apply.mark_complete(plan)
    assert zarr.open_array(plan.output, mode="r").attrs["fffcore"]["complete"] is False


def test_the_local_cluster_listens_on_the_loopback_address_only_without_a_dashboard():
    import urllib.error
    import urllib.request

    import psutil

    from fffcore.apply import local_client

    for dashboard in (False, True):
        client = (
            local_client(1, 1, dashboard=True) if dashboard else local_client(1, 1)
        )  # the dashboard is off by default
        try:
            processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
            listening = [
                c.laddr for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
            ]
            assert listening and all(address.ip == "127.0.0.1" for address in listening), listening
            try:
                status = urllib.request.urlopen(client.dashboard_link, timeout=10).status
            except urllib.error.HTTPError as error:
                status = error.code
            assert status == (200 if dashboard else 404), (dashboard, status)
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()


def test_unreadable_files_and_unusable_outputs_get_a_one_line_error(files, tmp_path, no_work, capsys):
    layer, npy = str(files["layer"]), str(files["npy"])
    np.savez(tmp_path / "archive.npz", x=np.load(npy))
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    (tmp_path / "a-file.zarr").write_text("")
    (tmp_path / "link.zarr").symlink_to(tmp_path / "nowhere.zarr")
    prefix = ["--prefix", "encoder.layers.3.ffn.", "--depth", "6"]
    cases = [
        ([layer, str(tmp_path / "archive.npy"), "o.zarr"], "a .npz archive named .npy.*save the array itself"),
        ([str(tmp_path / "broken.safetensors"), npy, "o.zarr", *prefix], "not a readable checkpoint \\(Safetensor"),
        ([layer, npy, str(tmp_path / "a-file.zarr")], "is a file, not a Zarr array"),
        ([layer, npy, str(tmp_path / "a-file.zarr"), "--overwrite"], "is a file, not a Zarr array"),
        ([layer, npy, str(tmp_path / "link.zarr")], "is a symbolic link \\(to .*nowhere.zarr\\)"),
        ([layer, npy, "/proc/y.zarr"], "lies on /proc, a virtual file system"),
        ([layer, npy, "o.zarr", "--dashboard", "--scheduler", "tcp://127.0.0.1:1"], "--dashboard: only for the local"),
    ]
    with contextlib.suppress(ImportError):
        import torch

        marker = tmp_path / "code-ran"
        (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(2000))
        torch.save({"w": Runs(str(marker))}, tmp_path / "unsafe.pt")
        cases += [
            ([str(tmp_path / "random.pt"), npy, "o.zarr", *prefix], "not a readable checkpoint .*no code in it runs"),
            ([str(tmp_path / "unsafe.pt"), npy, "o.zarr", *prefix], "not a readable checkpoint \\(UnpicklingError"),
        ]
    for arguments, message in cases:
        assert main(["apply", *arguments]) == 2, arguments
        error = capsys.readouterr().err
        assert re.search(message, error) and len(error.strip().splitlines()) == 1, (arguments, error)
    assert not (tmp_path / "code-ran").exists()  # weights_only: the unsafe checkpoint's code never ran
    assert not Path("o.zarr").exists() and not (tmp_path / "nowhere.zarr").exists()


class Runs:
    """An object whose unpickling creates a folder: what a malicious checkpoint would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def test_ctrl_c_prints_one_line_with_the_command_that_resumes_and_exits_130(files, tmp_path):
    out = tmp_path / "y.zarr"
    marker = tmp_path / "blocked"
    environment = plugin_environment(tmp_path / "plugin", watched=out / "c", after_files=8, marker=marker)
    arguments = [str(files["layer"]), str(files["npy"]), "y.zarr", "--chunk-rows", "125", "--workers", "1"]
    run = subprocess.Popen(
        [sys.executable, "-m", "fffcore.cli", "apply", *arguments, "--backend", "blocking", "--quiet"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), run.communicate(timeout=30)
        os.killpg(run.pid, signal.SIGINT)  # as a Ctrl-C at a terminal: the command and its cluster's processes
        _, stderr = run.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("fff apply: 5000 rows in 40 chunks"), stderr
    found = re.fullmatch(
        r"fff apply: interrupted; (\d+) of 40 chunks are written and kept; to continue: (.*)", lines[1]
    )
    assert found is not None, stderr
    assert int(found.group(1)) == len(chunk_files(out)) >= 8
    command = shlex.split(found.group(2))
    assert command[:2] == ["fff", "apply"] and command[-1] == "--resume", command
    # The printed command, run as printed (the blocking backend now blocks nowhere), finishes the output.
    environment = plugin_environment(tmp_path / "plugin-2", watched=out / "c", after_files=10**6, marker=marker)
    resumed = subprocess.run(
        [sys.executable, "-m", "fffcore.cli", *command[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=tmp_path,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(
        rf"\({40 - int(found.group(1))} chunks? computed, {found.group(1)} written before\)", resumed.stdout
    )
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], expected_output(files, "reference"))
