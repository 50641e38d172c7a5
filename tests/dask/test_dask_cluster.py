"""FFF layers over Dask arrays on a real cluster: equal results, parameters sent once per worker, a lost worker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import fffcore

da = pytest.importorskip("dask.array", reason="Dask arrays need dask: pip install 'fffcore[dask]'")
pytest.importorskip("distributed", reason="the cluster tests need distributed: pip install 'fffcore[dask]'")


def params_fetches(client) -> dict[str, int]:
    """How many times each worker received a parameters key from another worker."""

    def count(dask_worker) -> int:
        log = dask_worker.transfer_incoming_log
        return sum(1 for entry in log for key in entry.get("keys", {}) if "fffcore-params" in str(key))

    return client.run(count)


def test_on_a_cluster_results_equal_bit_for_bit_and_each_worker_gets_the_parameters_once(dask_client):
    layer = fffcore.FFFParams.random(d_in=64, d_out=32, depth=9, seed=0)
    rows = np.random.default_rng(1).standard_normal((6000, 64)).astype(np.float32)
    backend = "numba" if any(r.name == "numba" and r.available for r in fffcore.list_backends()) else "reference"
    before = params_fetches(dask_client)
    y = fffcore.fff(da.from_array(rows, chunks=(250, 64)), layer, backend=backend)  # 24 tasks on 2 workers
    got = dask_client.compute(y).result()
    np.testing.assert_array_equal(got, fffcore.fff(rows, layer, backend=backend))
    after = params_fetches(dask_client)
    # One worker computes the parameters' key; the other fetches it once, not once per task.
    assert all(after[w] - before.get(w, 0) <= 1 for w in after), (before, after)


def test_a_worker_killed_in_the_middle_of_a_run_loses_nothing(dask_client, tmp_path):
    layer = fffcore.FFFParams.random(d_in=128, d_out=64, depth=10, seed=2)
    rows = np.random.default_rng(3).standard_normal((16000, 128)).astype(np.float32)  # 8 MiB in the graph
    expected = fffcore.fff(rows, layer, backend="reference")

    # Defined here, not at module level, so that it travels to the workers by value (they never import this file).
    def first_blocks_then_wait(block: np.ndarray, tickets: str, first: int) -> np.ndarray:
        """``block`` itself; only the first ``first`` calls, across every worker, return at once.

        Each call tries to take one of ``first`` tickets (files created exclusively, so two worker
        processes never take the same one); a call without a ticket waits until ``tickets/released``
        exists. Calls with zero rows (Dask's guesses of the result's type) pass.
        """
        if block.shape[0] == 0:
            return block
        folder = Path(tickets)
        for ticket in range(first):
            try:
                os.close(os.open(folder / f"ticket-{ticket}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return block
            except FileExistsError:
                continue
        deadline = time.monotonic() + 300  # ends a wait that a failed test never released
        while not (folder / "released").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{folder / 'released'} never appeared")
            time.sleep(0.01)
        return block

    # 64 blocks, of which the first 4 to start are computed and the rest wait until a worker is killed:
    # the kill comes when exactly 4 results are held, at least one of them by the worker killed.
    gated = da.from_array(rows, chunks=(250, 128)).map_blocks(
        first_blocks_then_wait, str(tmp_path), 4, dtype=rows.dtype, meta=np.empty((0, 0), rows.dtype)
    )
    y = fffcore.fff(gated, layer, backend="reference")
    persisted = dask_client.persist(y)

    def finished(dask_scheduler) -> tuple[int, dict[str, int]]:
        """How many fff blocks are done, and how many of them each worker holds."""
        done = [ts for ts in dask_scheduler.tasks.values() if str(ts.key).startswith("('fffcore-fff")]
        done = [ts for ts in done if ts.state == "memory"]
        held: dict[str, int] = {}
        for ts in done:
            for worker in ts.who_has:
                held[worker.address] = held.get(worker.address, 0) + 1
        return len(done), held

    try:
        deadline = time.monotonic() + 120  # a guard against a run that never gets there, not the kill point
        while dask_client.run_on_scheduler(finished)[0] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        done, held = dask_client.run_on_scheduler(finished)
        assert done == 4, (done, held)  # 4 blocks done and 60 waiting: the kill comes mid-run
        victim = max(held, key=held.get)  # it holds finished results, which must be computed again
        pid = dask_client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
    finally:
        (tmp_path / "released").touch()
    got = dask_client.compute(persisted).result(timeout=300)
    np.testing.assert_array_equal(got, expected)
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarted it, for the tests that follow
