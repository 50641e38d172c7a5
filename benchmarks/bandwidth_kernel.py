"""The bandwidth probe of :mod:`fffcore.benchmarks.roofline`: a parallel, vectorised sum (imports numba)."""

from __future__ import annotations

import numba
import numpy as np

#: Independent partial sums per chunk: enough to hide the latency of vector additions, so the
#: probe is limited by how fast the data arrives, not by the adds.
LANES = 64


@numba.njit(parallel=True, fastmath=True, cache=True)
def parallel_sum(values: np.ndarray, chunks: int) -> float:
    """Sum of a 1-D float32 array whose size is a multiple of ``LANES``, read once, in ``chunks`` parts."""
    rows = values.reshape(-1, LANES)
    n = rows.shape[0]
    partial = np.zeros((chunks, LANES), dtype=np.float32)
    for chunk in numba.prange(chunks):
        lanes = np.zeros(LANES, dtype=np.float32)
        for i in range(chunk * n // chunks, (chunk + 1) * n // chunks):
            for lane in range(LANES):
                lanes[lane] += rows[i, lane]
        partial[chunk] = lanes
    return partial.sum()
