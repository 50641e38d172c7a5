"""Running the kernels through cupy: compiled-module cache, device copies of the weights, launches.

cupy is imported inside the functions that need it, never at module import.
All decisions (variant, geometry, tree groups) come from
:mod:`fffcore.backends.cupy.kernel_plan`; this module only moves arrays and
launches what the plan says.
"""

from __future__ import annotations

import functools
import threading
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fffcore.arrays import array_type
from fffcore.backends.cupy.kernel_plan import (
    CMM_SCALAR_DTYPES,
    FFF_SCALAR_DTYPES,
    SHARED_BYTES_PER_BLOCK,
    SORTED_SCALAR_DTYPES,
    TILED_SCALAR_DTYPES,
    TOP_WALK_SCALAR_DTYPES,
    WARPS_PER_BLOCK,
    DtypeTraits,
    GroupedStep,
    KernelConfig,
    KernelLaunch,
    cmm_launches,
    compile_options,
    dtype_traits,
    fff_launches,
    grouped_fff_launches,
    kernel_config,
    kernel_source,
    tiled_fff_launches,
)
from fffcore.params import FFFParams


class KernelCache:
    """Compiled kernels, one module per (device, kernel variant), and each device's shared-memory
    limit; safe to use from several threads.

    cupy also keeps its own on-disk cache of NVRTC output (``~/.cupy/kernel_cache``),
    so a new process pays for module loading, not for compilation.
    """

    def __init__(self) -> None:
        self._modules: dict[tuple[int, KernelConfig], Any] = {}
        self._functions: dict[tuple[int, KernelConfig, str], Any] = {}
        self._shared_limits: dict[int, int] = {}
        self._shared_allowed: dict[int, int] = {}
        self._lock = threading.Lock()

    def shared_limit(self, cupy: Any, device_id: int) -> int:
        """The dynamic shared memory a block may opt into on ``device_id``, in bytes, read once."""
        limit = self._shared_limits.get(device_id)
        if limit is None:
            properties = cupy.cuda.runtime.getDeviceProperties(device_id)
            limit = self._shared_limits.setdefault(device_id, int(properties["sharedMemPerBlockOptin"]))
        return limit

    def allow_dynamic_shared(self, kernel: Any, shared_bytes: int) -> None:
        """Raise ``kernel``'s dynamic shared-memory limit to ``shared_bytes`` when that is over the
        48 KiB every launch may take (a launch asking for more without the opt-in fails); the limit
        a kernel of this cache was given is remembered, so the driver is asked once per kernel and size."""
        if shared_bytes <= SHARED_BYTES_PER_BLOCK or self._shared_allowed.get(id(kernel), 0) >= shared_bytes:
            return
        with self._lock:
            if kernel.max_dynamic_shared_size_bytes < shared_bytes:
                kernel.max_dynamic_shared_size_bytes = shared_bytes
            # Kernels live as long as this cache, so their ids are not reused meanwhile.
            self._shared_allowed[id(kernel)] = max(shared_bytes, self._shared_allowed.get(id(kernel), 0))

    def function(self, cupy: Any, device_id: int, config: KernelConfig, name: str) -> Any:
        """The kernel ``name`` of ``config``'s variant on ``device_id`` (the current device)."""
        key = (device_id, config, name)
        function = self._functions.get(key)
        if function is None:
            with self._lock:
                function = self._functions.get(key)
                if function is None:
                    module = self._modules.get(key[:2])
                    if module is None:
                        module = cupy.RawModule(code=kernel_source(), options=compile_options(config))
                        self._modules[key[:2]] = module
                    function = self._functions[key] = module.get_function(name)
        return function


@dataclass(frozen=True)
class DeviceWeights:
    """C-contiguous device arrays of one layer on one device; ``b_in`` None without bias."""

    w_in: Any
    b_in: Any
    w_out: Any


class WeightCache:
    """Device weights per :class:`FFFParams` object and device, kept as long as the params live.

    numpy parameters are copied to the device once. cupy parameters are used
    in place; they are remembered only when they are already C-contiguous (so
    no copy is cached that could go stale), which saves the per-call checks.
    """

    def __init__(self) -> None:
        self._weights: weakref.WeakKeyDictionary[FFFParams, dict[int, DeviceWeights]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def weights(self, cupy: Any, params: FFFParams, device_id: int) -> DeviceWeights:
        """The layer's weights on ``device_id`` (the current device)."""
        per_device = self._weights.get(params)
        cached = None if per_device is None else per_device.get(device_id)
        if cached is not None:
            return cached
        kind = params.array_type
        if params.dtype in RAW_BIT_DTYPES:
            weights = DeviceWeights(
                raw_bits(cupy, params.w_in, "params.w_in"),
                None if params.b_in is None else raw_bits(cupy, params.b_in, "params.b_in"),
                raw_bits(cupy, params.w_out, "params.w_out"),
            )
        elif kind == "cupy":
            weights, in_place = _cupy_weights(cupy, params, device_id)
            if not in_place:
                return weights
        elif kind == "numpy":
            weights = DeviceWeights(
                cupy.asarray(params.w_in),
                None if params.b_in is None else cupy.asarray(params.b_in),
                cupy.asarray(params.w_out),
            )
        else:
            raise TypeError(f"params: the cupy backend takes numpy or cupy parameters, got {kind}")
        with self._lock:
            # Another thread may have stored an equivalent copy meanwhile; keep the first.
            return self._weights.setdefault(params, {}).setdefault(device_id, weights)


def _cupy_weights(cupy: Any, params: FFFParams, device_id: int) -> tuple[DeviceWeights, bool]:
    """The cupy parameters as contiguous arrays, and whether they are the given arrays themselves."""
    for name in ("w_in", "b_in", "w_out"):
        array = getattr(params, name)
        if array is not None and int(array.device.id) != device_id:
            raise ValueError(
                f"params.{name}: expected an array on CUDA device {device_id} like x, got device {array.device.id}"
            )
    arrays = (params.w_in, params.b_in, params.w_out)
    if all(array is None or array.flags.c_contiguous for array in arrays):
        return DeviceWeights(*arrays), True
    contiguous = (None if array is None else cupy.ascontiguousarray(array) for array in arrays)
    return DeviceWeights(*contiguous), False


@dataclass(frozen=True)
class DeviceRows:
    """``x`` as C-contiguous device rows of the params dtype, and where the result must go back to
    (numpy, or for bfloat16 a torch tensor; else the cupy array itself)."""

    rows: Any
    device_id: int
    return_numpy: bool
    return_torch: bool = False


#: Dtypes the kernels store as raw 16-bit words that neither numpy nor cupy has an array type for:
#: they come from torch tensors through DLPack (as int16 words) and go back the same way.
RAW_BIT_DTYPES = ("bfloat16",)


def raw_bits(cupy: Any, tensor: Any, name: str) -> Any:
    """A torch bfloat16 tensor's memory as a C-contiguous cupy uint16 array, through DLPack (no copy
    when it is contiguous already); TypeError when ``tensor`` is not a bfloat16 tensor."""
    import torch

    if not isinstance(tensor, torch.Tensor) or tensor.dtype is not torch.bfloat16:
        raise TypeError(f"{name}: bfloat16 layers take torch bfloat16 tensors, got {type(tensor).__name__}")
    return cupy.from_dlpack(tensor.contiguous().view(torch.int16)).view(cupy.uint16)


def torch_from_bits(cupy: Any, array: Any) -> Any:
    """A cupy uint16 array of bfloat16 words as a torch bfloat16 tensor on its device (no copy)."""
    import torch

    return torch.from_dlpack(array.view(cupy.int16)).view(torch.bfloat16)


def _storage(cupy: Any, dtype: str) -> Any:
    """The cupy dtype the kernels' results of ``dtype`` are stored in."""
    return cupy.uint16 if dtype in RAW_BIT_DTYPES else dtype


def _give_back(cupy: Any, prepared: DeviceRows, array: Any) -> Any:
    """A result in the caller's array type: numpy, torch (through DLPack, bfloat16 words as
    bfloat16), or the cupy array itself."""
    if prepared.return_numpy:
        return array.get()
    if prepared.return_torch:
        if array.dtype == cupy.uint16:
            return torch_from_bits(cupy, array)
        import torch

        return torch.from_dlpack(array)
    return array


def device_rows(cupy: Any, x: Any, dtype: str) -> DeviceRows:
    """Copy or convert ``x`` (B, d_in) to the device in ``dtype``; never writes ``x``.

    numpy input goes to the current device and the result comes back as numpy;
    cupy input stays on its device, copied only when it is strided or of another dtype.
    """
    kind = array_type(x)
    if dtype in RAW_BIT_DTYPES:
        rows = raw_bits(cupy, x, "x")
        return DeviceRows(rows, int(rows.device.id), False, return_torch=True)
    if kind == "numpy":
        return DeviceRows(cupy.asarray(np.ascontiguousarray(x, dtype=dtype)), int(cupy.cuda.Device().id), True)
    if kind == "cupy":
        device_id = int(x.device.id)
        with cupy.cuda.Device(device_id):
            return DeviceRows(cupy.ascontiguousarray(x, dtype=dtype), device_id, False)
    raise TypeError(f"x: the cupy backend takes numpy or cupy arrays, got {kind}")


def _pointer(array: Any) -> int:
    return int(array.data.ptr)


# Typed explicitly: the kernel's `long long rows` and `int` arguments must be passed at their exact widths.
# Cached per launch, since the same plans come back call after call.
@functools.lru_cache(maxsize=1024)
def _typed_scalars(launch: KernelLaunch, dtypes: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(np.dtype(dtype).type(value) for dtype, value in zip(dtypes, launch.scalars, strict=True))


def _launch(kernel: Any, launch: KernelLaunch, arrays: tuple[Any, ...], dtypes: tuple[str, ...]) -> None:
    geometry = launch.geometry
    kernel(
        (geometry.grid,),
        (geometry.block,),
        arrays + _typed_scalars(launch, dtypes),
        shared_mem=geometry.shared_bytes,
    )


#: The kernel variants of ``fff``: one warp per row in row order; the row-grouped pair (top
#: levels, a sort by subtree, the rest in sorted order); or tiled (a block walks a tile of rows
#: level by level, their x in shared memory); see fff_kernels.cu.
FFF_VARIANTS = ("warp_per_row", "row_grouped", "tiled")
#: From this many rows the backend would take the row-grouped variant. None until a GPU run of
#: benchmarks/studies/gpu_bench.py has measured where it starts to pay; until then it is run only on request.
GROUPED_MIN_ROWS: int | None = None
#: From this many rows the backend would take the tiled variant. None until a GPU run has measured
#: where it pays; until then it is run only on request (``variant="tiled"``).
TILED_MIN_ROWS: int | None = None


def choose_variant(rows: int, depth: int, variant: str | None) -> str:
    """The ``fff`` variant for a call: ``variant`` when given, else by :data:`GROUPED_MIN_ROWS`
    (:data:`TILED_MIN_ROWS` is not consulted until it is measured)."""
    if variant is not None:
        if variant not in FFF_VARIANTS:
            raise ValueError(f"variant: expected one of {FFF_VARIANTS} or None, got {variant!r}")
        return variant
    if GROUPED_MIN_ROWS is not None and rows >= GROUPED_MIN_ROWS and depth >= 1:
        return "row_grouped"
    return "warp_per_row"


# A NamedTuple rather than a frozen dataclass: one is built on every call, at a third of the cost.
class FFFCall(NamedTuple):
    """One ``fff`` call on the device, as each variant's runner takes it.

    Attributes:
        cupy: the cupy module.
        kernels: the compiled-kernel cache.
        device_id: the device the arrays are on (the current device).
        config: the compiled variant of the source.
        traits: the params dtype's storage and arithmetic.
        sizes: ``(rows, trees, depth, d_in, d_out)``, rows >= 1.
        arrays: ``(x rows, w_in, b_in, w_out, y)``, C-contiguous device arrays (``b_in`` any valid
            array when the layer has none).
        warps_per_block: warps per block.
    """

    cupy: Any
    kernels: KernelCache
    device_id: int
    config: KernelConfig
    traits: DtypeTraits
    sizes: tuple[int, int, int, int, int]
    arrays: tuple[Any, ...]
    warps_per_block: int

    def kernel(self, name: str) -> Any:
        """The compiled kernel ``name`` of this call's variant."""
        return self.kernels.function(self.cupy, self.device_id, self.config, name)


def run_fff(
    x: Any,
    params: FFFParams,
    kernels: KernelCache,
    weights: WeightCache,
    *,
    warps_per_block: int = WARPS_PER_BLOCK,
    variant: str | None = None,
) -> Any:
    """The fused FFF layer: (B, d_in) -> (B, d_out) in ``params.dtype``, in ``x``'s array type.

    ``warps_per_block`` (a power of two from 1 to 32) and ``variant`` (one of
    :data:`FFF_VARIANTS`; None: :func:`choose_variant`) are knobs for benchmarks
    and tests; the backend always uses the defaults.
    """
    import cupy

    traits = dtype_traits(params.dtype)
    prepared = device_rows(cupy, x, params.dtype)
    with cupy.cuda.Device(prepared.device_id):
        layer = weights.weights(cupy, params, prepared.device_id)
        rows = prepared.rows
        y = cupy.empty((rows.shape[0], params.d_out), dtype=_storage(cupy, params.dtype))
        count = int(rows.shape[0])
        chosen = choose_variant(count, params.depth, variant)
        if count:
            config = kernel_config(
                dtype=params.dtype,
                activation=params.activation,
                has_bias=layer.b_in is not None,
                d_in=params.d_in,
                d_out=params.d_out,
                in_addresses=(_pointer(rows), _pointer(layer.w_in)),
                out_addresses=(_pointer(layer.w_out), _pointer(y)),
                warps_per_block=warps_per_block,
            )
            # Without a bias, w_in stands in for b_in: that variant never reads it.
            b_in = layer.w_in if layer.b_in is None else layer.b_in
            call = FFFCall(
                cupy,
                kernels,
                prepared.device_id,
                config,
                traits,
                (count, params.trees, params.depth, params.d_in, params.d_out),
                (rows, layer.w_in, b_in, layer.w_out, y),
                warps_per_block,
            )
            _VARIANT_RUNNERS[chosen](call)
    return _give_back(cupy, prepared, y)


def _run_warp_per_row(call: FFFCall) -> None:
    """The fused ``fff``, one warp per row: one launch per tree group."""
    launches = fff_launches(*call.sizes, call.traits.compute_itemsize, warps_per_block=call.warps_per_block)
    kernel = call.kernel(launches[0].kernel)
    for launch in launches:
        _launch(kernel, launch, call.arrays, FFF_SCALAR_DTYPES)


def _run_tiled(call: FFFCall) -> None:
    """The tiled ``fff``: one launch per tree group, its tile sized to the device's opt-in shared memory."""
    launches = tiled_fff_launches(
        *call.sizes,
        call.traits.itemsize,
        call.traits.compute_itemsize,
        warps_per_block=call.warps_per_block,
        shared_limit=call.kernels.shared_limit(call.cupy, call.device_id),
    )
    kernel = call.kernel(launches[0].kernel)
    call.kernels.allow_dynamic_shared(kernel, launches[0].geometry.shared_bytes)
    for launch in launches:
        _launch(kernel, launch, call.arrays, TILED_SCALAR_DTYPES)


def _run_grouped(call: FFFCall) -> None:
    """The row-grouped ``fff``: per tree group, the top walk, the rows sorted by subtree on the
    device, the sorted walk."""
    cupy = call.cupy
    rows, w_in, b_in, w_out, y = call.arrays
    count = int(rows.shape[0])
    compute = np.float64 if call.traits.compute_itemsize == 8 else np.float32
    steps: tuple[GroupedStep, ...] = grouped_fff_launches(
        *call.sizes, call.traits.compute_itemsize, warps_per_block=call.warps_per_block
    )
    top_walk = call.kernel(steps[0].top_walk.kernel)
    sorted_walk = call.kernel(steps[0].sorted.kernel)
    for step in steps:
        top_acts = cupy.empty((count, step.tree_count, step.top_levels), dtype=compute)
        top_path = cupy.empty((count, step.tree_count, step.top_levels + 1), dtype=np.int32)
        keys = cupy.empty((count,), dtype=np.int32)
        _launch(top_walk, step.top_walk, (rows, w_in, b_in, top_acts, top_path, keys), TOP_WALK_SCALAR_DTYPES)
        order = cupy.ascontiguousarray(cupy.argsort(keys), dtype=np.int64)
        walk = (rows, w_in, b_in, w_out, y, order, top_acts, top_path)
        _launch(sorted_walk, step.sorted, walk, SORTED_SCALAR_DTYPES)


#: Each variant's runner, by the name ``run_fff`` takes.
_VARIANT_RUNNERS = {"warp_per_row": _run_warp_per_row, "row_grouped": _run_grouped, "tiled": _run_tiled}


def run_cmm(x: Any, params: FFFParams, kernels: KernelCache, weights: WeightCache) -> tuple[Any, Any]:
    """CMM: logits (B, K, D+1) in ``params.dtype`` and nodes (B, K, D+1) int64, in ``x``'s array type."""
    import cupy

    prepared = device_rows(cupy, x, params.dtype)
    with cupy.cuda.Device(prepared.device_id):
        layer = weights.weights(cupy, params, prepared.device_id)
        rows = prepared.rows
        shape = (rows.shape[0], params.trees, params.depth + 1)
        logits = cupy.empty(shape, dtype=_storage(cupy, params.dtype))
        nodes = cupy.empty(shape, dtype=np.int64)
        launches = cmm_launches(int(rows.shape[0]), params.trees, params.depth, params.d_in)
        if launches:
            config = kernel_config(
                dtype=params.dtype,
                activation=params.activation,
                has_bias=layer.b_in is not None,
                d_in=params.d_in,
                d_out=params.d_out,
                in_addresses=(_pointer(rows), _pointer(layer.w_in)),
                # cmm touches no output rows; the fff variant's vec_out keeps one module for both kernels.
                out_addresses=(_pointer(layer.w_out),),
            )
            kernel = kernels.function(cupy, prepared.device_id, config, launches[0].kernel)
            b_in = layer.w_in if layer.b_in is None else layer.b_in
            for launch in launches:
                _launch(kernel, launch, (rows, layer.w_in, b_in, logits, nodes), CMM_SCALAR_DTYPES)
    return _give_back(cupy, prepared, logits), _give_back(cupy, prepared, nodes)
