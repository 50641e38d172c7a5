"""Row counts at which the numba backend changes code paths, importable without numba.

:mod:`fffcore.backends.numba.kernels` explains each; the plugin declares them to the
conformance suite (``Backend.batch_thresholds``), which checks batches just below, at and
above every one.
"""

#: Up to this many rows a call walks row by row (the row-by-row kernel).
SMALL_MAX_ROWS = 8
#: Rows per block of the blocked walk.
DEFAULT_BLOCK = 64
#: From this many rows the blocked walk runs on every thread.
PARALLEL_MIN_ROWS = 1024
#: From this many rows the blocked walk walks a top stage and sorts (split >= 1):
#: round(log2(rows / DEFAULT_BLOCK)) >= 1.
FIRST_SPLIT_ROWS = 91
