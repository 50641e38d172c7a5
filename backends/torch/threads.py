"""Threads of a torch call on the CPU: one thread for small calls, torch's whole pool for the rest.

A call of the torch backend is a few dozen small torch operations, each a parallel region of
torch's OpenMP pool that ends only when every thread has reached its end. On a busy machine each
region may first wait a scheduler time slice for a core: with both cores of a 2-core machine held
by other processes, a call of 128 rows (width 768, depth 11, float32) took 8.4 to 83 ms on the pool
against 2.0 to 2.1 ms on one thread; idle, 0.92 to 1.06 ms against 1.30 to 1.34 ms. So calls of at
most :data:`ONE_THREAD_MAX_ITEMS` (row, tree) items run on one thread.

The count depends on the call's size alone, never on timings: torch's matrix products may round
differently on one thread than on several, and the same call must give the same bits every time.

One thread is set with ``torch.set_num_threads(1)`` for the call and the earlier count restored
after it. The OpenMP and MKL counts it sets are the calling thread's own, so other threads
computing meanwhile keep theirs; only a thread whose first parallel torch operation falls inside
such a call starts with one thread (torch sizes a new thread's pool from the last count set).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The largest call, in (row, tree) items, run on one thread: at 256 rows one thread cost 1.5x idle and
#: saved little busy (2-core AMD EPYC, width 768, depth 11, float32; ``python -m
#: benchmarks.studies.busy_machine``; benchmarks/NOTES.md, section 16).
ONE_THREAD_MAX_ITEMS = 128


def run_on_cpu_threads(items: int, device_type: str, call: Callable[[], T]) -> T:
    """``call()`` on one thread when it computes at most :data:`ONE_THREAD_MAX_ITEMS` items on the
    CPU; as it is otherwise (other devices, larger calls, or torch set to one thread already)."""
    torch = sys.modules["torch"]
    if device_type != "cpu" or items > ONE_THREAD_MAX_ITEMS:
        return call()
    threads = torch.get_num_threads()
    if threads < 2:
        return call()
    torch.set_num_threads(1)
    try:
        return call()
    finally:
        torch.set_num_threads(threads)
