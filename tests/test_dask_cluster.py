"""FFF layers over Dask arrays on a real cluster: equal results, parameters sent once per worker, a lost worker."""

from __future__ import annotations

import os
import signal
import time

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


def test_a_worker_killed_in_the_middle_of_a_run_loses_nothing(dask_client):
    layer = fffcore.FFFParams.random(d_in=128, d_out=64, depth=10, seed=2)
    rows = np.random.default_rng(3).standard_normal((16000, 128)).astype(np.float32)  # 8 MiB in the graph
    expected = fffcore.fff(rows, layer, backend="reference")
    y = fffcore.fff(da.from_array(rows, chunks=(250, 128)), layer, backend="reference")  # 64 blocks, slow backend
    persisted = dask_client.persist(y)

    def finished(dask_scheduler) -> int:
        tasks = dask_scheduler.tasks.values()
        return sum(1 for ts in tasks if str(ts.key).startswith("('fffcore-fff") and ts.state == "memory")

    deadline = time.monotonic() + 60
    while dask_client.run_on_scheduler(finished) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    done_at_kill = dask_client.run_on_scheduler(finished)
    pid = next(iter(dask_client.run(os.getpid).values()))
    os.kill(pid, signal.SIGKILL)
    got = dask_client.compute(persisted).result(timeout=300)
    assert 4 <= done_at_kill < 64, done_at_kill  # killed mid-run
    np.testing.assert_array_equal(got, expected)
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarted it, for the tests that follow
