"""Reliability: what fffcore guarantees under hostile plugins, bad input, fork and long use (docs/reliability.md)."""
