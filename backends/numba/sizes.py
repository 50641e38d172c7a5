"""Row counts at which the numba backend changes code paths, importable without numba.

:mod:`fffcore.backends.numba.calls` explains the choice and ``benchmarks/NOTES.md`` (section 12)
the measurements behind each number; the plugin declares them to the conformance suite
(``Backend.batch_thresholds``), which checks batches just below, at and above every one.
"""

#: Rows the row-group kernel walks side by side (and the unit it hands to each thread).
GROUP_ROWS = 4
#: Below this many rows: the row-group kernels; from it: the blocked walk.
BLOCKED_MIN_ROWS = 1536
#: Rows per block of the blocked walk.
DEFAULT_BLOCK = 64
#: From this many rows a call may run on every thread (the row-group kernel handing out one
#: group at a time, the blocked walk one block), when that has been the faster lately.
PARALLEL_MIN_ROWS = 16
