"""The soak benchmark runs, snapshots after each part, and fails on a result that drifts."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.studies import soak


def test_soak_runs_a_small_mix_and_snapshots_after_each_part():
    cases = [soak.Case("reference", "float32", 0, batch, "numpy", op) for batch in (0, 3) for op in ("fff", "cmm")]
    result = soak.soak(40, parts=2, cases=cases)
    assert result.calls == 40 and result.threaded_calls == 10 and result.backends == ["reference"]
    assert len(result.snapshots) == 3
    assert all(s.rss_mib > 0 and s.open_fds > 0 and s.threads >= 1 for s in result.snapshots)


def test_the_mix_covers_every_available_cpu_backend_and_its_dtypes():
    import fffcore

    cases = soak.available_cases()
    for row in fffcore.list_backends():
        if row.available and "cpu" in row.devices:
            assert {c.dtype for c in cases if c.backend == row.name} == set(row.dtypes)
    assert {c.batch for c in cases} == set(soak.BATCHES)


def test_a_result_that_drifts_fails_the_soak():
    case = soak.Case("reference", "float32", 0, 3, "numpy", "fff")
    mix = soak.Mix([case])
    mix.call(case)
    mix.call(case)  # the same again: fine
    mix.inputs[case] = np.nextafter(mix.inputs[case], np.inf)  # as if the backend now returned other bits
    with pytest.raises(AssertionError, match="different result than the first"):
        mix.call(case)
