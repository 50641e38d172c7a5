"""Warm-up ahead of time, and the notice a first call that compiles gives while it runs."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

import fffcore
from fffcore.cli import main


def test_warmup_prepares_each_available_backend_and_says_how_long_each_took():
    seconds = fffcore.warmup(dtypes=["float32"])
    available = {row.name for row in fffcore.list_backends() if row.available}
    assert set(seconds) == available and all(value >= 0 for value in seconds.values())


def test_warmup_refuses_unknown_backends_and_dtypes_before_doing_anything():
    with pytest.raises(fffcore.UnknownBackendError):
        fffcore.warmup(backends=["nosuch"])
    with pytest.raises(ValueError, match=r"dtypes: expected dtypes the backends declare"):
        fffcore.warmup(dtypes=["float128"], backends=["reference"])


def test_fff_warmup_lists_each_backend(capsys):
    assert main(["warmup", "--backend", "reference"]) == 0
    assert capsys.readouterr().out.startswith("reference")
    assert main(["warmup", "--dtype", "float128"]) == 2
    assert "fff warmup: dtypes" in capsys.readouterr().err


class TestNumba:
    calls = pytest.importorskip("fffcore.backends.numba.calls", reason="numba is not installed")

    def test_warmup_compiles_every_kernel_so_that_first_calls_load_nothing(self):
        fffcore.warmup(dtypes=["float64"], backends=["numba"])
        from fffcore.backends.numba.kernels import cache_statistics

        before = cache_statistics()
        params = fffcore.FFFParams.random(5, 3, 4, dtype="float64", seed=1)
        for rows in (1, 20, 2000):
            x = np.ones((rows, 5))
            fffcore.fff(x, params, backend="numba")
            fffcore.cmm(x, params, backend="numba")
        assert cache_statistics() == before  # nothing compiled or loaded after the warm-up

    def test_a_slow_first_call_is_announced_once_per_dtype_while_it_runs(self, monkeypatch, caplog):
        monkeypatch.setattr(self.calls, "NOTICE_AFTER_S", 0.02)
        monkeypatch.setattr(self.calls, "_first_calls_seen", set())
        monkeypatch.setattr(self.calls, "_announced_dtypes", set())
        with caplog.at_level(logging.WARNING, logger="fffcore.backends.numba"):
            self.calls._first_call("fff test", "float32", lambda: time.sleep(0.3))
            self.calls._first_call("fff test", "float32", lambda: time.sleep(0.3))  # its second call
            self.calls._first_call("cmm test", "float32", lambda: time.sleep(0.3))  # float32 announced already
            self.calls._first_call("cmm fast", "float32", lambda: None)  # fast: nothing compiled, nothing said
            self.calls._first_call("fff test", "float64", lambda: time.sleep(0.3))
        messages = [record.getMessage() for record in caplog.records]
        assert len(messages) == 2, messages
        assert "numba is compiling its float32 kernels (first: fff test) on first use" in messages[0]
        assert "float64 kernels" in messages[1]
        assert f"about {self.calls.COMPILE_ALL_S} s" in messages[0]
        assert "fff warmup" in messages[0] and self.calls.cache_location().split(" ")[0] in messages[0]
