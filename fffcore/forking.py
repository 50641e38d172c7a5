"""Running in a child made by ``os.fork()``: thread pools inherited from the parent are not used.

A forked child has one thread, but the thread pools of the libraries it
inherited believe their workers still exist. GNU OpenMP, which both numba's
``omp`` threading layer and torch's CPU build use, then kills the child
(numba: "fork() called from a process already using GNU OpenMP") or waits
forever for the missing workers (torch). ``multiprocessing`` pools with the
``fork`` start method, gunicorn workers and data-loader workers all meet this.

So fffcore remembers, at each fork, which pools may have been started in the
parent, and in the child:

- ``numba`` runs its serial kernels only (the same results, computed on the calling thread);
- ``torch``, if the parent had imported it, gets ``torch.set_num_threads(1)``
  when fffcore's torch backend first computes in the child, as torch's own
  data-loader workers do (torch's pool may have been started by any torch
  code of the parent, fffcore's or not).

Both hold for the child's own children too. Processes started with the
``spawn`` or ``forkserver`` methods start clean and use every thread.
"""

from __future__ import annotations

import os
import sys

#: Thread pools that fffcore has started in this process ("numba").
_started: set[str] = set()
#: Thread pools this process inherited through fork() and must not enter.
_inherited: set[str] = set()
#: Whether torch has been limited to one thread in this (forked) process.
_torch_limited = [False]


def note_started(pool: str) -> None:
    """Record that fffcore has started ``pool``'s threads in this process."""
    _started.add(pool)


def inherited(pool: str) -> bool:
    """Whether this process is a fork of one where ``pool`` may have started threads."""
    return pool in _inherited


def limit_torch_in_forked_child() -> None:
    """In a forked child whose parent had imported torch: one torch thread, set once."""
    if "torch" in _inherited and not _torch_limited[0]:
        import torch

        torch.set_num_threads(1)
        _torch_limited[0] = True


def _after_fork_in_child() -> None:
    _inherited.update(_started)
    if "torch" in sys.modules:
        _inherited.add("torch")
    _torch_limited[0] = False


os.register_at_fork(after_in_child=_after_fork_in_child)
