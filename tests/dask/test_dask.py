"""FFF layers over Dask arrays (:mod:`fffcore.dask_arrays`): lazy, chunk by chunk, equal to the whole-array call."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fffcore
from fffcore.registry import UnknownBackendError
from tests.fakes import FakeBackend, plugin_with

da = pytest.importorskip("dask.array", reason="Dask arrays need dask: pip install 'fffcore[dask]'")
dask = pytest.importorskip("dask")


def numba_here() -> bool:
    return any(row.name == "numba" and row.available for row in fffcore.list_backends())


BACKENDS = [
    "reference",
    pytest.param("numba", marks=pytest.mark.skipif(not numba_here(), reason="numba is not installed")),
]


@pytest.fixture
def layer() -> fffcore.FFFParams:
    return fffcore.FFFParams.random(d_in=48, d_out=20, depth=5, trees=2, seed=3)


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1037, 48)).astype(np.float32)


def test_fff_on_a_dask_array_is_a_lazy_array_of_the_right_shape_chunks_and_dtype(layer, rows):
    x = da.from_array(rows, chunks=(300, 48))
    y = fffcore.fff(x, layer)
    assert isinstance(y, da.Array)
    assert y.shape == (1037, 20) and y.chunks == ((300, 300, 300, 137), (20,)) and y.dtype == np.float32
    assert type(y._meta) is np.ndarray
    # Leading axes keep their blocks; the result is in the layer's dtype.
    x3 = da.from_array(rows[:1000].reshape(10, 100, 48).astype(np.float64), chunks=(4, 50, 48))
    y3 = fffcore.fff(x3, layer)
    assert y3.chunks == ((4, 4, 2), (50, 50), (20,)) and y3.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_equal_the_whole_array_call_bit_for_bit(layer, rows, backend):
    expected = fffcore.fff(rows, layer, backend=backend)
    for chunks in [(300, 48), (1, 48), (1037, 48), (250, 16)]:  # the last splits the features: merged first
        got = fffcore.fff(da.from_array(rows, chunks=chunks), layer, backend=backend).compute(scheduler="sync")
        np.testing.assert_array_equal(got, expected, err_msg=f"chunks {chunks}")
    logits, nodes = fffcore.cmm(da.from_array(rows, chunks=(300, 48)), layer, backend=backend)
    assert logits.shape == nodes.shape == (1037, 2, 6) and nodes.dtype == np.int64
    got_logits, got_nodes = dask.compute(logits, nodes, scheduler="sync")
    want = fffcore.cmm(rows, layer, backend=backend)
    np.testing.assert_array_equal(got_logits, want.logits)
    np.testing.assert_array_equal(got_nodes, want.nodes)


class CountingBackend(FakeBackend):
    """The reference, recording its ``cmm`` calls too."""

    def cmm(self, x, params):
        self.calls.append("cmm")
        return super().cmm(x, params)


def test_a_named_backend_computes_every_chunk_and_cmm_runs_each_block_once(use_registry, layer, rows):
    counting = CountingBackend("counting")
    use_registry(("counting", plugin_with(counting)))
    x = da.from_array(rows, chunks=(100, 48))  # 11 blocks
    fffcore.fff(x, layer, backend="counting").compute(scheduler="sync")
    assert counting.calls.count("fff") == 1 + 11  # the zero-row check when the graph is built, then each block
    counting.calls.clear()
    logits, nodes = fffcore.cmm(x, layer, backend="counting")
    dask.compute(logits, nodes, scheduler="sync")
    assert counting.calls.count("cmm") == 1 + 11


def test_a_bad_call_fails_when_the_graph_is_built_not_at_compute_time(layer, rows):
    x = da.from_array(rows, chunks=(300, 48))
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 48\)"):
        fffcore.fff(da.from_array(rows[:, :40], chunks=(300, 40)), layer)
    with pytest.raises(UnknownBackendError, match="nonesuch"):
        fffcore.fff(x, layer, backend="nonesuch")
    with pytest.raises(TypeError, match="x: expected a real floating dtype"):
        fffcore.cmm(x.astype(np.int32), layer)
    with pytest.raises(TypeError, match="params: expected FFFParams"):
        fffcore.fff(x, {"w_in": 1})


def test_the_parameters_are_one_key_of_the_graph_and_tasks_carry_only_its_name(rows):
    layer = fffcore.FFFParams.random(d_in=48, d_out=48, depth=9, seed=1)  # 1023 nodes: 390 KiB of weights
    y = fffcore.fff(da.from_array(rows, chunks=(100, 48)), layer)
    graph = dict(y.__dask_graph__())
    params_keys = [key for key in graph if "fffcore-params" in str(key)]
    assert len(params_keys) == 1
    block_tasks = [task for key, task in graph.items() if str(key).startswith("('fffcore-fff")]
    assert len(block_tasks) == 11
    assert max(len(pickle.dumps(task)) for task in block_tasks) < 2000  # the key, not 390 KiB of weights
    # Equal layers share the key; another layer gets another one, so a cluster never mixes them up.
    same = fffcore.FFFParams(layer.w_in, layer.b_in, layer.w_out, layer.activation)
    other = layer.with_activation("relu")
    graphs = [dict(fffcore.fff(da.from_array(rows, chunks=100), p).__dask_graph__()) for p in (layer, same, other)]
    keys = {str(next(key for key in graph if "params" in str(key))) for graph in graphs}
    assert len(keys) == 2


def test_a_split_feature_axis_is_merged_within_the_chunk_size_setting(layer, rows):
    x = da.from_array(rows, chunks=(1037, 16))
    with dask.config.set({"array.chunk-size": "16KiB"}):  # 85 rows of 48 float32 features
        y = fffcore.fff(x, layer)
        assert max(y.chunks[0]) * 48 * 4 <= 16 * 1024 and y.chunks[1] == (20,)
        np.testing.assert_array_equal(y.compute(scheduler="sync"), fffcore.fff(rows, layer))
    with dask.config.set({"array.chunk-size": "100B"}), pytest.raises(ValueError, match=r"array\.chunk-size"):
        fffcore.fff(x, layer)


def test_an_empty_dask_array_gives_an_empty_result(layer):
    y = fffcore.fff(da.zeros((0, 48), chunks=(10, 48), dtype=np.float32), layer)
    assert y.compute(scheduler="sync").shape == (0, 20)


def test_importing_fffcore_does_not_import_dask():
    import subprocess
    import sys

    code = (
        "import sys, numpy, fffcore; fffcore.fff(numpy.ones((2, 4), 'f4'), fffcore.FFFParams.random(4, 4, depth=1)); "
        "print('dask' in sys.modules)"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == "False"
