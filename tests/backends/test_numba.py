"""The ``numba`` backend against the NumPy reference and the float64 oracle.

Exact where arithmetic is exact (small integer-valued inputs), derived
tolerances and the near-tie rule on random inputs, special values on their
own, and the contract: shapes, dtypes, layouts, no writes to inputs, threads,
the on-disk cache and availability without numba.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import time
import weakref

import numpy as np
import pytest

import fffcore
from fffcore import FFFParams
from fffcore.backends.numba import plugin
from fffcore.reference import evaluate_path
from fffcore.spec import ACTIVATIONS

pytest.importorskip("numba", reason="the numba backend needs numba: pip install 'fffcore[numba]'")

# Imports numba, so only after the importorskip above.
from fffcore.backends.numba import backward, calls, kernels
from fffcore.backends.numba.sizes import (
    BLOCKED_MIN_ROWS,
    DEFAULT_BLOCK,
    GROUP_ROWS,
    PARALLEL_MIN_ROWS,
)

#: A batch of many row groups, and a medium one (several blocks, several groups of rows).
PARALLEL_ROWS = 1024 + 37
MEDIUM_ROWS = 3 * DEFAULT_BLOCK + 5
#: A batch for the blocked walk.
BLOCKED_ROWS = BLOCKED_MIN_ROWS + 37
#: Every kernel and variant: whole groups and a remainder, the thread floor, the blocked walk.
ROW_COUNTS = [
    0,
    1,
    GROUP_ROWS + 1,
    2 * GROUP_ROWS,
    2 * GROUP_ROWS + 1,
    PARALLEL_MIN_ROWS + 1,
    MEDIUM_ROWS,
    PARALLEL_ROWS,
    BLOCKED_ROWS,
]

DTYPES = ("float32", "float64")

#: Largest |act'(z)| over the activations of the spec (gelu's is 1.1289 near z = 2.1,
#: gelu_tanh's about the same, silu's 1.0998, relu's and identity's 1): an error e in
#: a logit moves the activated value by at most ACT_SLOPE * e.
ACT_SLOPE = 1.13


def gamma(n: int, dtype: str) -> float:
    """Higham's gamma_n = n u / (1 - n u), u the unit roundoff: the relative error bound of an n-term sum."""
    u = np.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


def integer_layer(rng, d_in, d_out, depth, trees, dtype, activation, bias=True) -> FFFParams:
    """Weights in -3..3 and biases in -5..5: every logit and output is an exact small integer sum."""
    n = 2 ** (depth + 1) - 1
    return FFFParams(
        rng.integers(-3, 4, (trees, n, d_in)).astype(dtype),
        rng.integers(-5, 6, (trees, n)).astype(dtype) if bias else None,
        rng.integers(-3, 4, (trees, n, d_out)).astype(dtype),
        activation,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["identity", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_exact_on_integer_inputs(dtype, activation, bias, rows):
    # |logit| <= 9 * 3 * 4 + 5 and |y| <= 2 trees * 4 levels * 113 * 3: far below 2**24,
    # so every partial sum is exact in float32 and any summation order gives the same bits.
    rng = np.random.default_rng(rows)
    params = integer_layer(rng, 9, 5, 3, 2, dtype, activation, bias)
    x = rng.integers(-4, 5, (rows, 9)).astype(dtype)
    expected = fffcore.cmm(x, params, backend="reference")
    result = fffcore.cmm(x, params, backend="numba")
    assert result.logits.dtype == np.dtype(dtype) and result.nodes.dtype == np.int64
    np.testing.assert_array_equal(result.nodes, expected.nodes)
    np.testing.assert_array_equal(result.logits, expected.logits)
    y = fffcore.fff(x, params, backend="numba")
    assert y.dtype == np.dtype(dtype) and y.shape == (rows, 5)
    np.testing.assert_array_equal(y, fffcore.fff(x, params, backend="reference"))


def test_exact_ties_go_left():
    # Every logit is exactly 0 (x orthogonal to all weights): every row takes the leftmost path.
    params = FFFParams(np.tile([[1.0, -1.0]], (1, 7, 1)), np.zeros((1, 7)), np.ones((1, 7, 2)), "relu")
    x = np.array([[2.0, 2.0], [-3.0, -3.0]])
    result = fffcore.cmm(x, params, backend="numba")
    np.testing.assert_array_equal(result.nodes, [[[0, 1, 3]], [[0, 1, 3]]])
    np.testing.assert_array_equal(result.logits, np.zeros((2, 1, 3)))


def check_against_oracle(x, params, logits, nodes, y):
    """The near-tie rules: a valid path, logits within their rounding band, a branch against the
    float64 sign only inside the band, and the output within its derived bound along our own path."""
    dtype = params.dtype
    levels = params.depth + 1
    # 1. The path follows the backend's own logits exactly: 2n + 1 + (logit > 0).
    np.testing.assert_array_equal(nodes[..., 0], 0)
    np.testing.assert_array_equal(nodes[..., 1:], 2 * nodes[..., :-1] + 1 + (logits[..., :-1] > 0))
    truth = evaluate_path(x, params, nodes)
    # 2. Each logit is a (d_in + 1)-term sum in dtype: |error| <= gamma_{d_in+1} * sum |x_i w_i| + |b|.
    band = gamma(params.d_in + 1, dtype) * truth.logit_scale
    assert np.all(np.abs(logits - truth.logits) <= band)
    # 3. A branch may disagree with the float64 sign only where the float64 logit is inside the band.
    disagree = (logits[..., :-1] > 0) != (truth.logits[..., :-1] > 0)
    assert np.all(np.abs(truth.logits[..., :-1][disagree]) <= band[..., :-1][disagree])
    # 4. Output: act(logit) is off by ACT_SLOPE * band + u |act| (rounding to dtype), each times |w_out|,
    #    plus the K*L-term sum of the products in dtype: gamma_{K*L+1} * output_scale.
    u = np.finfo(dtype).eps / 2
    tree = np.arange(params.trees)[None, :, None]
    w_out = np.abs(params.w_out.astype(np.float64)[tree, nodes])  # (B, K, L, d_out)
    act_error = ACT_SLOPE * band + u * np.abs(fffcore.reference.activate(params.activation, truth.logits))
    bound = np.einsum("bkl,bklo->bo", act_error, w_out) + gamma(params.trees * levels + 1, dtype) * truth.output_scale
    assert np.all(np.abs(y - truth.output) <= bound)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize(
    ("rows", "trees", "depth", "bias"),
    [
        (1, 1, 0, True),
        (2 * GROUP_ROWS, 3, 6, False),  # the row-group kernel: two whole groups
        (7, 3, 4, False),  # a group and three rows on their own
        (PARALLEL_MIN_ROWS + 3, 2, 5, True),  # the row-group kernel on every thread
        (MEDIUM_ROWS, 2, 6, True),
        (BLOCKED_MIN_ROWS + 1, 1, 7, True),  # the blocked walk
        (PARALLEL_ROWS, 2, 6, True),
    ],
)
def test_random_layers_within_derived_bounds(dtype, activation, rows, trees, depth, bias):
    params = FFFParams.random(24, 10, depth, trees, bias=bias, activation=activation, dtype=dtype, seed=rows)
    x = np.random.default_rng(rows + 1).standard_normal((rows, 24)).astype(dtype)
    logits, nodes = fffcore.cmm(x, params, backend="numba")
    y = fffcore.fff(x, params, backend="numba")
    check_against_oracle(x, params, logits, nodes, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_near_ties_are_handled_by_the_band(dtype):
    # Half the rows sit exactly on the root's hyperplane, then are nudged by one ulp either way.
    params = FFFParams.random(16, 4, 3, 1, bias=False, activation="gelu", dtype=dtype, seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 16)).astype(dtype)
    w = params.w_in[0, 0].astype(np.float64)
    x64 = x.astype(np.float64)
    x64[:32] -= np.outer(x64[:32] @ w / (w @ w), w)  # project onto w's orthogonal complement
    x = x64.astype(dtype)
    x[:32, 0] = np.nextafter(x[:32, 0], np.where(np.arange(32) % 2 == 0, np.inf, -np.inf).astype(dtype))
    logits, nodes = fffcore.cmm(x, params, backend="numba")
    check_against_oracle(x, params, logits, nodes, fffcore.fff(x, params, backend="numba"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_special_values_match_the_reference(dtype, activation):
    # d_in = 1 and weight 1 at every node, so each logit is x itself (plus a zero bias):
    # NaN (goes left), +inf (right, act = inf), -inf (left, act(-inf) is the limit), zero (left).
    params = FFFParams(np.ones((1, 3, 1), dtype), np.zeros((1, 3), dtype), np.full((1, 3, 2), 0.5, dtype), activation)
    x = np.array([[np.nan], [np.inf], [-np.inf], [0.0], [-0.0], [2.0]], dtype)
    expected = fffcore.cmm(x, params, backend="reference")
    result = fffcore.cmm(x, params, backend="numba")
    np.testing.assert_array_equal(result.nodes, expected.nodes)
    np.testing.assert_array_equal(result.logits, expected.logits)  # NaN == NaN position-wise
    expected_y = fffcore.fff(x, params, backend="reference")
    np.testing.assert_allclose(fffcore.fff(x, params, backend="numba"), expected_y, rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_special_values_one_row_at_a_time(dtype, activation):
    # The same rows as above, each alone, so each goes through the row-group kernel's single rows.
    params = FFFParams(np.ones((1, 3, 1), dtype), np.zeros((1, 3), dtype), np.full((1, 3, 2), 0.5, dtype), activation)
    for value in (np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0):
        x = np.array([[value]], dtype)
        expected = fffcore.cmm(x, params, backend="reference")
        result = fffcore.cmm(x, params, backend="numba")
        np.testing.assert_array_equal(result.nodes, expected.nodes)
        np.testing.assert_array_equal(result.logits, expected.logits)
        expected_y = fffcore.fff(x, params, backend="reference")
        y = fffcore.fff(x, params, backend="numba")
        np.testing.assert_allclose(y, expected_y, rtol=4 * np.finfo(dtype).eps)


def test_small_calls_on_strided_or_other_dtype_rows_take_the_general_path():
    params = FFFParams.random(8, 3, 3, 2, seed=6, dtype="float32")
    wide = np.random.default_rng(7).standard_normal((2, 16))
    for x in (wide[:, ::2], wide[:, :8], wide[:, :8].astype(np.float32)[::-1]):
        before = x.copy()
        y = fffcore.fff(x, params, backend="numba")
        np.testing.assert_array_equal(x, before)
        rows = np.ascontiguousarray(x, dtype=np.float32)
        logits, nodes = fffcore.cmm(rows, params, backend="numba")
        check_against_oracle(rows, params, logits, nodes, y)


def test_non_contiguous_and_other_dtype_inputs_are_converted_without_writes():
    params = FFFParams.random(8, 3, 3, 2, seed=5, dtype="float32")
    base = np.random.default_rng(6).standard_normal((10, 16))  # float64
    x = base[::2, ::2]  # strided, float64: one copy into float32 rows
    before = x.copy()
    expected = fffcore.fff(np.ascontiguousarray(x, np.float32), params, backend="numba")
    np.testing.assert_array_equal(fffcore.fff(x, params, backend="numba"), expected)
    np.testing.assert_array_equal(fffcore.fff(x.T.copy().T, params, backend="numba"), expected)  # Fortran order
    np.testing.assert_array_equal(x, before)
    read_only = np.ascontiguousarray(x, np.float32)
    read_only.flags.writeable = False
    np.testing.assert_array_equal(fffcore.fff(read_only, params, backend="numba"), expected)


def test_leading_dimensions_and_empty_batches():
    params = FFFParams.random(6, 4, 2, 1, seed=7)
    x = np.random.default_rng(8).standard_normal((2, 3, 6)).astype(np.float32)
    assert fffcore.fff(x, params, backend="numba").shape == (2, 3, 4)
    assert fffcore.cmm(x, params, backend="numba").nodes.shape == (2, 3, 1, 3)
    empty = np.zeros((0, 6), np.float32)
    assert fffcore.fff(empty, params, backend="numba").shape == (0, 4)
    logits, nodes = fffcore.cmm(empty, params, backend="numba")
    assert logits.shape == (0, 1, 3) and nodes.dtype == np.int64


def test_concurrent_calls_from_threads_agree_with_a_serial_call():
    params = FFFParams.random(32, 8, 5, 2, seed=9)
    # Small batches (always on the calling thread), medium and large ones (the row-group kernel and
    # the blocked walk, serial or parallel as each layer's choice says).
    sizes = [2 * GROUP_ROWS, MEDIUM_ROWS, PARALLEL_ROWS, BLOCKED_ROWS] * 2
    inputs = [np.random.default_rng(s).standard_normal((rows, 32)).astype(np.float32) for s, rows in enumerate(sizes)]
    serial = [fffcore.fff(x, params, backend="numba") for x in inputs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda x: fffcore.fff(x, params, backend="numba"), inputs))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_registered_with_priority_over_the_reference_and_chosen_automatically():
    backend = fffcore.get_backend("numba")
    assert backend.priority > fffcore.get_backend("reference").priority
    assert set(backend.dtypes) >= {"float32", "float64"} and set(backend.activations) == set(ACTIVATIONS)
    params = FFFParams.random(4, 2, 1, seed=0)
    with fffcore.use_backend("numba"):
        assert fffcore.fff(np.ones((1, 4), np.float32), params).shape == (1, 2)


def test_unavailable_without_numba_names_the_install_command(monkeypatch):
    monkeypatch.setattr(plugin.importlib.util, "find_spec", lambda name: None)
    status = plugin.NumbaBackend().availability()
    assert not status.available
    assert "numba" in status.reason and status.fix == "pip install 'fffcore[numba]'"


def run_fresh(code: str, **env: str) -> dict:
    """Run ``code`` in a new interpreter and return the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_fffcore_does_not_import_numba_and_listing_checks_it_loads():
    seen = run_fresh(
        """
        import json, sys, fffcore
        imported_early = "numba" in sys.modules
        rows = {b.name: b.available for b in fffcore.list_backends()}
        print(json.dumps({"rows": rows, "imported_early": imported_early}))
        """
    )
    assert seen["rows"]["numba"] is True
    assert seen["imported_early"] is False


def test_a_second_process_loads_the_kernels_from_the_disk_cache_and_honours_numba_num_threads():
    # Every kernel, serial and parallel, compiled here (or loaded) into the cache; the child, on one
    # thread, runs the serial ones: the row-group kernels (2 and 10 rows) and the blocked walk (all).
    fffcore.warmup(["float32"], ["numba"])
    params = FFFParams.random(16, 4, 3, 1, seed=10)
    x = np.random.default_rng(11).standard_normal((BLOCKED_ROWS, 16)).astype(np.float32)
    seen = run_fresh(
        """
        import json, numba, numpy as np, fffcore
        from fffcore.backends.numba import kernels
        params = fffcore.FFFParams.random(16, 4, 3, 1, seed=10)
        x = np.random.default_rng(11).standard_normal((ROWS, 16)).astype(np.float32)
        fffcore.fff(x[:2], params, backend="numba")
        fffcore.cmm(x[:2], params, backend="numba")
        fffcore.fff(x[:10], params, backend="numba")
        fffcore.cmm(x[:10], params, backend="numba")
        y = fffcore.fff(x, params, backend="numba")
        fffcore.cmm(x, params, backend="numba")
        kernels.wait_for_blocked_walks()  # loaded on a thread of its own, meanwhile the row groups served
        stats = kernels.cache_statistics()
        print(json.dumps({"y": y.tolist(), "threads": numba.get_num_threads(), **stats}))
        """.replace("ROWS", str(BLOCKED_ROWS)),
        NUMBA_NUM_THREADS="1",
    )
    assert seen["threads"] == 1
    assert seen["misses"] == 0 and seen["hits"] == 3  # fff rows, cmm rows, the blocked walk (one for both)
    # Serial there, parallel here: the same bits.
    np.testing.assert_array_equal(np.asarray(seen["y"], np.float32), fffcore.fff(x, params, backend="numba"))


def test_a_forked_child_computes_the_gradients_with_the_serial_kernels(tmp_path):
    # The parent ran numba's threads, which a forked child must not enter (GNU OpenMP aborts it): the
    # child's backward pass runs the serial variants of the same kernels and gets the parent's bits.
    script = tmp_path / "scenario.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, numpy as np, fffcore
            params = fffcore.FFFParams.random(16, 4, 3, seed=0)
            x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
            g = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
            expected = fffcore.fff_backward(x, params, g, backend="numba")  # on every thread
            pid = os.fork()
            if pid == 0:
                got = fffcore.fff_backward(x, params, g, backend="numba")
                os._exit(0 if all(np.array_equal(a, b) for a, b in zip(got, expected)) else 3)
            print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "child 0" in done.stdout, done.stdout + done.stderr


# -- threads: the same bits either way, and the choice between them ----------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [PARALLEL_MIN_ROWS + 2, MEDIUM_ROWS, BLOCKED_ROWS])
def test_serial_and_parallel_kernels_give_the_same_bits(dtype, rows):
    params = FFFParams.random(40, 12, 6, 2, activation="gelu", dtype=dtype, seed=rows)
    x = calls._read_only_rows(np.random.default_rng(rows).standard_normal((rows, 40)), dtype)
    arguments = calls._layer_arguments(params)
    if rows < BLOCKED_MIN_ROWS:
        serial, parallel = (kernels.fff_rows.run(threads, x, *arguments) for threads in (False, True))
        logits, nodes = kernels.cmm_rows.run(False, x, *arguments[:3])
        parallel_logits, parallel_nodes = kernels.cmm_rows.run(True, x, *arguments[:3])
    else:
        serial, parallel = (kernels.run_fff(x, *arguments, parallel=threads) for threads in (False, True))
        logits, nodes = kernels.run_cmm(x, *arguments[:3])
        parallel_logits, parallel_nodes = kernels.run_cmm(x, *arguments[:3], parallel=True)
    np.testing.assert_array_equal(serial, parallel)
    np.testing.assert_array_equal(logits, parallel_logits)
    np.testing.assert_array_equal(nodes, parallel_nodes)


@pytest.mark.parametrize("rows", [1, 7, DEFAULT_BLOCK, DEFAULT_BLOCK + 1, BLOCKED_ROWS])
def test_the_blocked_walks_serial_and_parallel_kernels_agree_with_the_row_groups(monkeypatch, rows):
    # The walk is one source compiled twice; its serial kernel runs in forked children. Up to one
    # block there is no top stage (split 0), which the parallel kernel once skipped the sort for.
    params = FFFParams.random(24, 9, 5, 2, activation="silu", dtype="float32", seed=rows)
    x = calls._read_only_rows(np.random.default_rng(rows).standard_normal((rows, 24)), "float32")
    arguments = calls._layer_arguments(params)
    expected = kernels.fff_rows.run(False, x, *arguments)
    expected_logits, expected_nodes = kernels.cmm_rows.run(False, x, *arguments[:3])
    results = [
        (kernels.run_fff(x, *arguments, parallel=threads), *kernels.run_cmm(x, *arguments[:3], parallel=threads))
        for threads in (False, True)
    ]
    monkeypatch.setattr(kernels.forking, "inherited", lambda pool: True)  # as in a forked child: the serial kernel
    results.append((kernels.run_fff(x, *arguments), *kernels.run_cmm(x, *arguments[:3])))
    for y, logits, nodes in results:
        np.testing.assert_array_equal(y, expected)
        np.testing.assert_array_equal(logits, expected_logits)
        np.testing.assert_array_equal(nodes, expected_nodes)


def test_each_kernel_is_compiled_serial_and_parallel_under_its_own_cache_name():
    # numba's disk cache files machine code under the function's qualified name, not under its
    # options: the two variants must be two functions, or one would load the other's code.
    pairs = (kernels.fff_rows, kernels.cmm_rows, kernels.walk_tree, backward.row_gradients, backward.node_gradients)
    for serial, parallel in pairs:
        assert not serial.targetoptions.get("parallel") and parallel.targetoptions["parallel"]
        assert serial.py_func.__code__ is parallel.py_func.__code__  # one source
        assert serial.py_func.__qualname__.endswith("_serial")
        assert parallel.py_func.__qualname__ == serial.py_func.__qualname__.replace("_serial", "_parallel")


def test_thread_choice_tries_both_then_takes_the_faster_and_retries_the_other_later(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(calls.time, "monotonic", lambda: now[0])
    choice = calls.ThreadChoice()
    assert choice.parallel(100)  # nothing timed: parallel first
    choice.record(100, True, 100 * 9e-6)  # the first: it may start the threads, so not counted
    assert choice.parallel(100)
    choice.record(100, True, 100 * 2e-6)
    assert not choice.parallel(100)  # then serial, once
    choice.record(100, False, 100 * 3e-6)
    assert choice.parallel(100)  # parallel was faster
    choice.record(100, True, 100 * 2e-6)
    assert choice.parallel(64)  # the same size class (64..127 rows)
    assert choice.parallel(128) and choice.parallel(32)  # other classes start over: parallel first
    now[0] += 2 * choice.RETRY_MIN_S  # serial last ran a while ago, but only 2 calls ago
    assert choice.parallel(100)
    for _ in range(choice.RETRY_CALLS - 2):
        choice.record(100, True, 100 * 2e-6)
    assert choice.parallel(100)  # 19 calls without serial: not yet
    choice.record(100, True, 100 * 2e-6)
    assert not choice.parallel(100)  # a while and 20 calls: serial is re-measured once
    for _ in range(4):  # the machine changed: serial is now faster
        choice.record(100, False, 100 * 1e-6)
    assert choice.per_row[(7, False)] < choice.per_row[(7, True)]
    assert not choice.parallel(100)  # serial now; parallel ran 4 calls ago
    for _ in range(choice.RETRY_CALLS - 4):
        choice.record(100, False, 100 * 1e-6)
    now[0] += 2 * choice.RETRY_MIN_S
    assert choice.parallel(100)  # a while and 20 calls: parallel's retry is due
    choice.record(100, True, 100 * 2e-6)  # right after serial calls: wakes the helpers, not counted
    assert choice.parallel(100)  # so the next call runs parallel too
    choice.record(100, True, 100 * 2e-6)
    assert not choice.parallel(100)  # serial until the next retry


def test_thread_choice_retries_a_layer_called_now_and_then_once_in_20_calls(monkeypatch):
    # A layer inside a model runs once per forward pass, long after its last call: the retry waits
    # for calls as well as time, or the two variants would take turns.
    now = [0.0]
    monkeypatch.setattr(calls.time, "monotonic", lambda: now[0])
    choice = calls.ThreadChoice()
    ran = []
    for _ in range(200):
        now[0] += 0.1  # 100 ms between calls
        parallel = choice.parallel(128)
        ran.append(parallel)
        choice.record(128, parallel, 128 * (2e-6 if parallel else 1e-6))  # serial the faster
    settled = ran[10:]
    assert sum(settled) <= 2 * len(settled) / choice.RETRY_CALLS + 2  # each retry: a waking call and a timed one


def test_thread_choice_does_not_count_the_parallel_call_that_wakes_the_helpers():
    choice = calls.ThreadChoice()
    choice.record(200, True, 200 * 1e-6)  # the first, not counted
    choice.record(200, True, 200 * 1e-6)
    choice.record(200, False, 200 * 2e-6)
    choice.record(200, True, 5e-3)  # right after a serial call: helpers asleep, not counted
    assert choice.per_row[(8, True)] == 1e-6
    assert choice.parallel(200)  # and the next call runs parallel to be counted
    choice.record(200, True, 200 * 1.5e-6)
    assert choice.per_row[(8, True)] > 1e-6


def test_thread_choice_follows_slow_parallel_calls_on_a_busy_machine():
    choice = calls.ThreadChoice()
    choice.record(200, True, 200 * 1e-6)  # the first, not counted
    choice.record(200, True, 200 * 1e-6)
    choice.record(200, False, 200 * 2e-6)
    choice.record(200, True, 200 * 1e-6)  # wakes the helpers: not counted
    assert choice.parallel(200)
    for _ in range(2):  # two in three parallel calls stall for a scheduler time slice
        choice.record(200, True, 8e-3)
    assert not choice.parallel(200)


def test_medium_batches_run_as_the_choice_says(monkeypatch):
    params = FFFParams.random(16, 4, 4, 1, seed=12)
    x = np.random.default_rng(13).standard_normal((MEDIUM_ROWS, 16)).astype(np.float32)
    expected = fffcore.fff(x, params, backend="numba")
    monkeypatch.setattr(calls.ThreadChoice, "parallel", lambda self, rows: False)

    def refuse(*args, **kwargs):
        raise AssertionError("a parallel kernel ran where the choice was serial")

    monkeypatch.setattr(kernels, "run_parallel", refuse)
    for _ in range(2):  # a kernel's first call in a process may compile: the second is timed for the choice
        np.testing.assert_array_equal(fffcore.fff(x, params, backend="numba"), expected)
        fffcore.cmm(x, params, backend="numba")
    timed = calls.thread_choice(params).per_row
    assert (MEDIUM_ROWS.bit_length(), False) in timed


@pytest.mark.parametrize(("dtype", "d_in"), [("float32", 96), ("float64", 96), ("float32", 1), ("float32", 3)])
def test_a_rows_result_is_the_same_bits_whatever_the_batch_around_it(dtype, d_in):
    # Batch-invariant: every kernel (single rows, groups of four, the blocked walk from 1536 rows, serial
    # or parallel) sums a row's dot products in one order and adds the bias unfused, so chunking an
    # array never changes a bit. (With d_in 1, a parallel kernel once fused the bias add into the
    # product for the rows left over from groups of four, and a repeated call could differ by an ulp.)
    params = FFFParams.random(d_in=d_in, d_out=40, depth=7, trees=2, dtype=dtype, seed=11)
    x = np.random.default_rng(12).standard_normal((4000, d_in)).astype(dtype)
    whole = fffcore.fff(x, params, backend="numba")
    logits, _ = fffcore.cmm(x, params, backend="numba")
    for lo, hi in [(0, 1), (7, 10), (3, 8), (0, 16), (1, 18), (5, 155), (2, 1537), (0, 1536), (999, 3000), (1, 4000)]:
        part = fffcore.fff(x[lo:hi], params, backend="numba")
        np.testing.assert_array_equal(part, whole[lo:hi], err_msg=f"rows {lo}:{hi}")
        np.testing.assert_array_equal(fffcore.cmm(x[lo:hi], params, backend="numba").logits, logits[lo:hi])
    from fffcore.backends.numba import kernels

    rows = np.ascontiguousarray(x[:18])  # four groups of four and two rows left over
    serial = kernels.cmm_rows.run(False, rows, params.w_in, params.b_in, True)[0]
    parallel = kernels.cmm_rows.run(True, rows, params.w_in, params.b_in, True)[0]
    np.testing.assert_array_equal(serial, parallel)


# Numba's own environment variables, each read fresh by a new interpreter: `fff backends` lists numba
# as unavailable with the setting's own fix (never a pip install), the automatic choice for numpy
# input falls back to another backend, and nothing prints a traceback.
_UNDER_NUMBA_SETTINGS = """
import json, sys
import numpy as np, fffcore
from fffcore.cli import main

code = main(["backends"])
params = fffcore.FFFParams.random(6, 5, 3, seed=4)
x = np.random.default_rng(5).standard_normal((64, 6)).astype(np.float32)
expected = fffcore.fff(x, params, backend="reference")
gave = {"code": code}
for key, backend in (("automatic", None), ("named", "numba")):
    try:
        y = fffcore.fff(x, params, backend=backend)
        gave[key] = "close" if np.allclose(y, expected, rtol=1e-4, atol=1e-4) else "wrong"
    except Exception as error:
        gave[key] = f"{type(error).__name__}: {error}"
print(json.dumps(gave))
"""


def run_under_numba_setting(name: str, value: str) -> tuple[list[str], dict, str]:
    """``fff backends`` and numpy calls in a new interpreter with numba's ``name`` set to ``value``:
    the listing's lines, what the calls gave, and stderr."""
    env = {key: item for key, item in os.environ.items() if not key.startswith("NUMBA_")} | {name: value}
    done = subprocess.run(
        [sys.executable, "-c", _UNDER_NUMBA_SETTINGS],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=os.path.dirname(__file__),  # not the checkout's root, whose fffcore/ would come first on sys.path
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    return lines[:-1], json.loads(lines[-1]), done.stderr


def numba_rows(listing: list[str]) -> dict[str, str]:
    """The numba entry's status, ``why`` and ``fix``, and the automatic choice for numpy arrays."""
    start = next(i for i, line in enumerate(listing) if line.startswith("numba "))
    end = next(i for i in range(start + 1, len(listing)) if not listing[i].startswith(" "))
    found = {"status": listing[start].split()[1]}
    for line in listing[start + 1 : end]:
        key, _, text = line.strip().partition(": ")
        if key in ("why", "fix"):
            found[key] = text
    found["numpy"] = next(line.split()[-1] for line in listing if "numpy arrays, float32 layer" in line)
    return found


def test_numba_disable_jit_lists_numba_unavailable_and_numpy_calls_take_another_backend():
    listing, calls_gave, _ = run_under_numba_setting("NUMBA_DISABLE_JIT", "1")
    numba = numba_rows(listing)
    assert numba["status"] == "unavailable"
    assert numba["why"] == "NUMBA_DISABLE_JIT=1 turns numba's compiler off"
    assert numba["fix"] == "unset NUMBA_DISABLE_JIT"
    assert numba["numpy"] != "numba"
    assert calls_gave["automatic"] == "close"
    assert calls_gave["named"].startswith("BackendUnavailableError: backend 'numba' is unavailable: NUMBA_DISABLE_JIT")
    assert "\n" not in calls_gave["named"]


def test_an_unknown_numba_threading_layer_lists_the_valid_values():
    listing, calls_gave, _ = run_under_numba_setting("NUMBA_THREADING_LAYER", "nosuch")
    numba = numba_rows(listing)
    assert numba["status"] == "unavailable"
    assert numba["why"] == "NUMBA_THREADING_LAYER=nosuch is not a threading layer numba knows"
    assert numba["fix"] == (
        "set NUMBA_THREADING_LAYER to one of default, safe, threadsafe, forksafe, tbb, omp, workqueue, "
        "or unset it (numba then picks one)"
    )
    assert numba["numpy"] != "numba"
    assert calls_gave["automatic"] == "close"
    assert calls_gave["named"].startswith("BackendUnavailableError: backend 'numba' is unavailable: NUMBA_THREADING")
    assert "\n" not in calls_gave["named"]


def test_a_known_threading_layer_that_does_not_load_fails_the_first_parallel_call_in_one_line():
    # tbb is a layer numba knows; without the TBB library it cannot load, which numba finds only when it
    # starts its threads. Where TBB is installed the calls simply run on it.
    listing, calls_gave, _ = run_under_numba_setting("NUMBA_THREADING_LAYER", "tbb")
    assert numba_rows(listing)["status"] == "available"
    for call in ("automatic", "named"):
        if calls_gave[call] != "close":
            assert "\n" not in calls_gave[call]
            assert calls_gave[call].startswith(
                "BackendUnavailableError: backend 'numba' is unavailable: its threading layer "
                "(NUMBA_THREADING_LAYER=tbb) does not load here: "
            )
            assert calls_gave[call].endswith("or unset NUMBA_THREADING_LAYER so that numba picks one that loads")


def test_numba_num_threads_zero_says_to_set_a_positive_number_not_to_reinstall():
    listing, calls_gave, _ = run_under_numba_setting("NUMBA_NUM_THREADS", "0")
    numba = numba_rows(listing)
    assert numba["status"] == "unavailable"
    assert numba["why"].startswith("NUMBA_NUM_THREADS=0 is not a number of threads")
    assert numba["fix"] == "set NUMBA_NUM_THREADS to a positive number, or unset it to use every core"
    assert numba["numpy"] != "numba"
    assert calls_gave["automatic"] == "close"
    assert calls_gave["named"].startswith(
        "BackendUnavailableError: backend 'numba' is unavailable: NUMBA_NUM_THREADS=0"
    )


def test_large_batches_run_the_row_groups_while_the_blocked_walk_compiles(monkeypatch):
    # A process without the blocked walk serves large batches with the row-group kernel (the same
    # bits) and compiles the walk on another thread, then runs it.
    params = FFFParams.random(16, 4, 5, 2, seed=14)
    x = np.random.default_rng(15).standard_normal((BLOCKED_MIN_ROWS + 3, 16)).astype(np.float32)
    expected_y = fffcore.fff(x, params, backend="numba")
    expected_paths = fffcore.cmm(x, params, backend="numba")
    monkeypatch.setattr(kernels, "_walks_ready", set())
    monkeypatch.setattr(kernels, "_walk_threads", {})
    monkeypatch.setattr(calls, "_walk_ready_for", weakref.WeakSet())
    walks = []
    real_run_blocked = kernels._run_blocked
    monkeypatch.setattr(kernels, "_run_blocked", lambda *args: walks.append(1) or real_run_blocked(*args))

    assert np.array_equal(fffcore.fff(x, params, backend="numba"), expected_y)
    assert walks == [] and len(kernels._walk_threads) == 1  # the row groups served; the walk compiles
    kernels.wait_for_blocked_walks()
    assert not kernels.compiling_blocked_walk()
    assert np.array_equal(fffcore.fff(x, params, backend="numba"), expected_y)
    logits, nodes = fffcore.cmm(x, params, backend="numba")
    assert np.array_equal(logits, expected_paths[0]) and np.array_equal(nodes, expected_paths[1])
    assert walks == [1, 1] and len(kernels._walk_threads) == 1  # then the walk, for fff and cmm alike


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_fork_waits_for_the_blocked_walk_compiling_so_that_the_child_can_compile(monkeypatch):
    params = FFFParams.random(16, 4, 5, 1, seed=16)
    x = np.random.default_rng(17).standard_normal((BLOCKED_MIN_ROWS, 16)).astype(np.float32)
    monkeypatch.setattr(kernels, "_walks_ready", set())
    monkeypatch.setattr(kernels, "_walk_threads", {})
    monkeypatch.setattr(calls, "_walk_ready_for", weakref.WeakSet())
    real = kernels.walk_tree.parallel

    class SlowToCompile:  # the walk is in the disk cache here: loading it would take a moment only
        def compile(self, signature):
            time.sleep(1.0)
            return real.compile(signature)

    monkeypatch.setattr(kernels, "walk_tree", kernels.walk_tree._replace(parallel=SlowToCompile()))
    fffcore.fff(x, params, backend="numba")  # starts compiling the walk on its own thread
    assert kernels.compiling_blocked_walk()
    pid = os.fork()
    if pid == 0:  # the child: exits at once (had the parent's compile been cut, numba's lock would be held)
        os._exit(0)
    assert not kernels.compiling_blocked_walk()  # the fork waited for the compile to end
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
