"""PyTorch backend: torch tensors in and out on CPU and CUDA (backend name ``torch``)."""
