"""The torch speed-ratio script runs end to end on a tiny layer (a smoke test; speed is not asserted)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="the torch ratio script needs PyTorch: pip install 'fffcore[torch]'")

from benchmarks.studies import torch_ratios


def test_ratio_script_checks_times_and_reports_every_implementation(capsys):
    arguments = ["--width", "16", "--depth", "7", "--batch", "300", "--hidden", "32", "--repeats", "2"]
    assert torch_ratios.main(arguments) == 0
    report = capsys.readouterr().out
    assert "width 16, depth 7" in report
    for name in ("torch backend", "paper torch FFF", "dense torch (hidden 32)"):
        assert name in report
    assert report.count("x faster") == 2


def test_ratio_script_rejects_a_wrong_implementation(monkeypatch):
    # The untimed check must fail when the backend's results are wrong.
    from fffcore.backends.torch.plugin import TorchBackend

    real = TorchBackend.fff
    monkeypatch.setattr(TorchBackend, "fff", lambda self, x, params: real(self, x, params) + 1.0)
    with pytest.raises(SystemExit, match="torch backend"):
        torch_ratios.main(["--width", "16", "--depth", "3", "--batch", "64", "--hidden", "32", "--repeats", "1"])
