"""What handing CUDA tensors to cupy and back costs, per call: DLPack against a view built from the address.

    python -m benchmarks.studies.cuda_bridge        # from the repository root; needs a CUDA device, torch and cupy

Prints microseconds per call (host time over many calls, then one synchronisation) of each
conversion on its own, and of ``fffcore.fff`` on cupy arrays, on CUDA tensors (bridged) and of
``FFFInference`` on CUDA tensors, at width 768, depth 11, batches 1 and 4096.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from fffcore.benchmarks.timing import host_stopwatch, seconds_per_call

CALLS = 2000
WARM_UP_CALLS = 20


def per_call(call: Callable[[], Any], synchronize: Callable[[], None], calls: int = CALLS) -> float:
    """Seconds per call: host time over ``calls`` calls in a row, the device synchronised at both ends."""
    for _ in range(WARM_UP_CALLS):
        call()
    return seconds_per_call(call, calls, host_stopwatch(synchronize=synchronize))


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("torch sees no CUDA device", file=sys.stderr)
        return 2
    import cupy

    import fffcore
    from fffcore.torch import FFFInference, to_torch

    synchronize = torch.cuda.synchronize
    params = fffcore.FFFParams.random(768, 768, 11, seed=0)
    on_cuda = to_torch(params, "cuda")
    cupy_params = fffcore.FFFParams(*(cupy.asarray(a) for a in (params.w_in, params.b_in, params.w_out)))
    module = FFFInference(params, device="cuda")
    for batch in (1, 4096):
        measure(batch, params, on_cuda, cupy_params, module, synchronize)
    return 0


def measure(batch: int, params: Any, on_cuda: Any, cupy_params: Any, module: Any, synchronize: Any) -> None:
    import cupy
    import torch

    import fffcore
    from fffcore.bridging import cupy_view_of

    x = torch.randn(batch, 768, device="cuda")
    c = cupy.asarray(x.cpu().numpy())
    rows = {
        "cupy.from_dlpack(tensor)": lambda: cupy.from_dlpack(x),
        "cupy view from the address": lambda: cupy_view_of(cupy, x),
        "torch.from_dlpack(cupy array)": lambda: torch.from_dlpack(c),
        "torch.as_tensor(cupy array)": lambda: torch.as_tensor(c, device="cuda"),
        "fffcore.fff(cupy array)": lambda: fffcore.fff(c, cupy_params),
        "fffcore.fff(CUDA tensor)": lambda: fffcore.fff(x, on_cuda),
        "FFFInference(CUDA tensor)": lambda: module(x),
    }
    print(f"batch {batch}: served by {fffcore.resolve_backend(x, on_cuda).name}")
    for label, call in rows.items():
        print(f"  {label:<32} {per_call(call, synchronize) * 1e6:9.1f} us")


if __name__ == "__main__":
    sys.exit(main())
