"""Row counts at which the numba backend changes code paths, importable without numba.

:mod:`fffcore.backends.numba.calls` explains the choice and ``benchmarks/NOTES.md`` (section 12)
the measurements behind each number; the plugin declares them to the conformance suite
(``Backend.batch_thresholds``), which checks batches just below, at and above every one.
"""

#: Rows the row-group kernel walks side by side (and the unit it hands to each thread).
GROUP_ROWS = 4
#: Below this many rows: the row-group kernels; from it: the blocked walk.
BLOCKED_MIN_ROWS = 512
#: Rows per block of the blocked walk.
DEFAULT_BLOCK = 64
#: From this many rows a call may run on every thread (the row-group kernel one group per
#: thread at a time, the blocked walk one block), while the helper threads keep showing up.
PARALLEL_MIN_ROWS = 16
#: From this many rows a call always runs on every thread: its serial time is long enough
#: that a helper thread late by a scheduler time slice still leaves parallel ahead.
ALWAYS_PARALLEL_ROWS = 1024
