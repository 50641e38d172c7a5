"""CuPy CUDA backend: a RawModule CMM/FFF kernel (backend name ``cupy``)."""
