"""Numba CPU backend: parallel, cached CMM/FFF kernels (backend name ``numba``)."""
