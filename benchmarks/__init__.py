"""Benchmarks: the pytest-benchmark suite and the comparison behind ``fff compare``."""
