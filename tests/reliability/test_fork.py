"""Forked children compute right instead of dying or hanging (each scenario in its own process, under a timeout)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: Seconds a scenario may take; a regression that hangs fails here instead of hanging CI.
TIMEOUT = 120

PRELUDE = """
import multiprocessing, os, sys
import numpy as np
import fffcore

params = fffcore.FFFParams.random(64, 32, 6, seed=0)
x = np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float32)  # above every parallel threshold


def in_child(backend):
    return fffcore.fff(x, params, backend=backend)


def forked_call_matches(backend, expected):
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if np.array_equal(in_child(backend), expected) else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
"""


def run_scenario(body: str, folder) -> str:
    # a file, not ``-c``: spawned and forkserver workers import the main module by its path
    script = folder / "scenario.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the scenario hung for {TIMEOUT} s:\n{error.stdout}\n{error.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def backends_here() -> list[str]:
    import fffcore

    return [row.name for row in fffcore.list_backends() if row.available and "cpu" in row.devices]


@pytest.mark.parametrize("backend", ["numba", "torch", "reference"])
def test_a_forked_child_computes_what_the_parent_did(backend, tmp_path):
    if backend not in backends_here():
        pytest.skip(f"backend {backend!r} is not available here")
    out = run_scenario(
        f"""
        expected = fffcore.fff(x, params, backend={backend!r})  # the parent starts its thread pool
        print("child", forked_call_matches({backend!r}, expected))
        pid = os.fork()  # a child that forks again
        if pid == 0:
            os._exit(forked_call_matches({backend!r}, expected))
        print("grandchild", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        print("parent still", int(not np.array_equal(fffcore.fff(x, params, backend={backend!r}), expected)))
    """,
        tmp_path,
    )
    assert out.split() == ["child", "0", "grandchild", "0", "parent", "still", "0"], out


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_multiprocessing_pool_returns_every_result(method, tmp_path):
    backends = [b for b in ("numba", "torch") if b in backends_here()] or ["reference"]
    out = run_scenario(
        f"""
        if __name__ == "__main__":
            backends = {backends!r}
            expected = {{b: fffcore.fff(x, params, backend=b) for b in backends}}
            with multiprocessing.get_context({method!r}).Pool(2) as pool:
                results = pool.map(in_child, backends * 2)
            print(all(np.array_equal(r, expected[b]) for r, b in zip(results, backends * 2)))
    """,
        tmp_path,
    )
    assert out.strip() == "True"


def test_a_child_forked_after_the_callers_own_torch_work_computes_with_the_torch_backend(tmp_path):
    if "torch" not in backends_here():
        pytest.skip("backend 'torch' is not available here")
    out = run_scenario(
        """
        import torch

        a = torch.randn(1000, 1000)
        (a @ a).sum()  # torch's thread pool started by the caller's code, not by fffcore
        expected = fffcore.fff(x, params, backend="reference")
        pid = os.fork()
        if pid == 0:
            y = fffcore.fff(x, params, backend="torch")
            os._exit(0 if np.allclose(y, expected, rtol=1e-5, atol=1e-6) else 3)
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """,
        tmp_path,
    )
    assert out.split() == ["child", "0"], out
