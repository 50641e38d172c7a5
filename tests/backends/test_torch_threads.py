"""The torch backend's choice of threads on the CPU: one thread or torch's whole pool, the other threads untouched."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs torch")

import fffcore  # noqa: E402
from fffcore.backends.torch import kernels, threads  # noqa: E402

needs_two_threads = pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs one thread here")


@pytest.fixture
def layer():
    return fffcore.FFFParams.random(d_in=32, d_out=16, depth=6, trees=2, seed=3)


@pytest.fixture
def threads_seen(monkeypatch):
    """The torch thread count each kernel call ran with."""
    seen: list[int] = []
    original = kernels.fff_rows

    def spying(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "fff_rows", spying)
    return seen


@needs_two_threads
def test_small_calls_run_on_one_thread_larger_on_the_pool_and_the_count_is_restored(layer, threads_seen):
    before = torch.get_num_threads()
    small_rows = threads.ONE_THREAD_MAX_ITEMS // layer.trees  # (row, tree) items: the largest one-thread call
    for rows in (1, small_rows, small_rows + 1):
        x = torch.randn(rows, 32)
        y = fffcore.fff(x, layer, backend="torch")
        expected = fffcore.fff(x.numpy(), layer, backend="reference")
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)  # float32 rounding of 14 terms of 32
        assert torch.get_num_threads() == before
    assert threads_seen == [1, 1, before]


@needs_two_threads
def test_the_same_call_gives_the_same_bits_every_time(layer):
    # The count depends on the size alone: torch's products may round differently on one thread and on two.
    for rows in (3, threads.ONE_THREAD_MAX_ITEMS):
        x = torch.randn(rows, 32)
        first = fffcore.fff(x, layer, backend="torch")
        assert all(torch.equal(first, fffcore.fff(x, layer, backend="torch")) for _ in range(5))


@needs_two_threads
def test_the_count_is_restored_when_the_call_raises(layer, monkeypatch):
    monkeypatch.setattr(kernels, "fff_rows", lambda *args: (_ for _ in ()).throw(RuntimeError("kernel failed")))
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="kernel failed"):
        fffcore.fff(torch.randn(4, 32), layer, backend="torch")
    assert torch.get_num_threads() == before


@needs_two_threads
def test_another_thread_computing_meanwhile_keeps_its_own_count(layer, monkeypatch):
    inside = threading.Event()
    leave = threading.Event()
    original = kernels.fff_rows

    def holding(*args, **kwargs):
        inside.set()
        assert leave.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "fff_rows", holding)
    before = torch.get_num_threads()
    caller = threading.Thread(target=fffcore.fff, args=(torch.randn(8, 32), layer), kwargs={"backend": "torch"})
    caller.start()
    try:
        assert inside.wait(10)
        assert torch.get_num_threads() == before  # this thread's pool, while the other call runs on one thread
    finally:
        leave.set()
        caller.join(10)
    assert torch.get_num_threads() == before
