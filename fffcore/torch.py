"""fffcore for PyTorch models: parameters on a device, and an inference module.

    >>> import torch, fffcore
    >>> from fffcore.torch import FFFInference
    >>> params = fffcore.FFFParams.random(d_in=8, d_out=8, depth=3, seed=0)
    >>> block = FFFInference(params)
    >>> block(torch.ones(2, 8)).shape
    torch.Size([2, 8])

Importing this module imports torch; ``import fffcore`` alone never does.
"""

from __future__ import annotations

from typing import Any

try:
    import torch
except ImportError as error:  # pragma: no cover - exercised only where torch is missing
    raise ImportError(
        f"fffcore.torch needs PyTorch, which is not installed: pip install 'fffcore[torch]' ({error})"
    ) from error

from fffcore import torch_ops
from fffcore.arrays import inspect_array
from fffcore.backends.torch.prepared import torch_dtype
from fffcore.params import FFFParams
from fffcore.plan import plan_for, resolve_backend
from fffcore.spec import dtype_name

__all__ = ["FFFInference", "FFFLayer", "to_torch"]


def to_torch(params: FFFParams, device: Any = "cpu", dtype: Any = None) -> FFFParams:
    """The same layer with its arrays as torch tensors on ``device``, converted once.

    Keep the result and pass it to every call: the ``torch`` backend then uses
    its tensors as they are. (Passing numpy parameters also works; the backend
    converts them on first use and caches the conversion per device.)

    Args:
        params: the layer, numpy or torch.
        device: a torch device or its name (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: a floating torch dtype or its name; None keeps ``params.dtype``.

    Returns:
        New :class:`FFFParams` holding tensors that own their memory (copies;
        numpy arrays inside ``FFFParams`` are read-only and torch needs writable memory).
    """
    if not isinstance(params, FFFParams):
        raise TypeError(f"params: expected FFFParams, got {type(params).__name__}")
    target = _torch_dtype(params.dtype if dtype is None else dtype)
    target_device = torch.device(device)

    def convert(array: Any) -> Any:
        if array is None:
            return None
        if isinstance(array, torch.Tensor):
            return array.detach().to(device=target_device, dtype=target, copy=True)
        return torch.tensor(array, device=target_device, dtype=target)

    return FFFParams(convert(params.w_in), convert(params.b_in), convert(params.w_out), params.activation)


class FFFInference(torch.nn.Module):
    """An FFF layer as a ``torch.nn.Module`` for inference: ``y = fff(x, params)``.

    The weights are buffers (``w_in`` (K, N, d_in), ``b_in`` (K, N) or None,
    ``w_out`` (K, N, d_out)), not parameters: they move with ``.to(device)``
    and are saved in ``state_dict``, but the module is not trainable. Its
    output never requires grad, whatever the input, and no autograd graph is
    kept, so it works the same under ``torch.no_grad()``, under
    ``torch.inference_mode()`` and outside both.

    Args:
        params: the layer; copied into the module's buffers.
        backend: the fffcore backend to call; None chooses per input (see
            :mod:`fffcore.plan`): ``numba`` for float32 and float64 CPU
            tensors where it is available, ``cupy`` (else ``torch``) for CUDA
            tensors. Backends of another array library get x and the weights
            through zero-copy views (:mod:`fffcore.bridging`), and the result
            comes back as a tensor on x's device.
        device, dtype: where and in which floating dtype to keep the weights;
            None keeps the parameters' own (numpy parameters go to the CPU).

    ``forward`` takes x of shape (..., d_in), any real floating dtype (it is
    converted to the weights' dtype), and returns (..., d_out) in the
    weights' dtype, on x's device. Eager calls go straight to the backend;
    under ``torch.compile``, ``torch.export`` and ``torch.jit.trace`` the
    module calls the custom operator ``torch.ops.fffcore.fff``
    (:mod:`fffcore.torch_ops`), which those tools record as one operation.
    """

    def __init__(self, params: FFFParams, backend: str | None = None, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend: expected a backend name (str) or None, got {type(backend).__name__}")
        if device is None:
            device = params.w_in.device if isinstance(params.w_in, torch.Tensor) else "cpu"
        tensors = to_torch(params, device, dtype)
        self.register_buffer("w_in", tensors.w_in)
        self.register_buffer("b_in", tensors.b_in)
        self.register_buffer("w_out", tensors.w_out)
        self.activation = params.activation
        self.backend = backend
        self._params: FFFParams | None = None
        self._stamp: tuple[int, ...] = ()

    def params(self) -> FFFParams:
        """The current buffers as :class:`FFFParams`, rebuilt only after they were replaced or written.

        ``.to()`` replaces the buffers; ``load_state_dict`` writes into them in place, which
        bumps each tensor's version counter. Either way a new ``FFFParams`` is built, so
        backends never use conversions cached for the old weights.
        """
        buffers = self._buffers  # read directly: Module.__getattr__ costs a microsecond per call here
        w_in, b_in, w_out = buffers["w_in"], buffers["b_in"], buffers["w_out"]
        if w_in.is_inference():
            # Made under torch.inference_mode: such tensors keep no version counter, so writes
            # to them cannot be noticed, and the parameters are built anew on every call.
            return FFFParams(w_in, b_in, w_out, self.activation)
        stamp = (id(w_in), w_in._version, id(b_in), 0 if b_in is None else b_in._version, id(w_out), w_out._version)
        if self._params is None or self._stamp != stamp:
            self._params = FFFParams(w_in, b_in, w_out, self.activation)
            self._stamp = stamp
        return self._params

    def forward(self, x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if _recording(x):
            # Detached always, not only when x requires grad, so every trace records the same graph.
            return torch_ops.fff_op(x.detach(), self.w_in, self.b_in, self.w_out, self.activation, self.backend)
        if x.requires_grad:  # the buffers never require grad, so x is the only way a graph could start
            x = x.detach()
        params = self.params()
        x, kind, device = inspect_array(x)
        return plan_for(x, kind, device, params, self.backend).fff(x, params)

    def resolved_backend(self, device: Any = None) -> str:
        """The backend a call on a tensor of the weights' dtype on ``device`` (default: the weights') runs on."""
        probe = torch.empty((0, self.w_in.shape[2]), dtype=self.w_in.dtype, device=device or self.w_in.device)
        return resolve_backend(probe, self.params(), self.backend).name

    def extra_repr(self) -> str:
        trees, n_nodes, d_in = self.w_in.shape
        depth = n_nodes.bit_length() - 1
        try:
            serving = self.resolved_backend()
        except Exception as error:  # a repr must not raise; say why no backend serves it
            serving = f"none: {error}"
        chosen = f"{self.backend!r}" if self.backend is not None else f"None (automatic: {serving})"
        return (
            f"trees={trees}, depth={depth}, d_in={d_in}, d_out={self.w_out.shape[2]}, "
            f"activation={self.activation!r}, bias={self.b_in is not None}, dtype={dtype_name(self.w_in.dtype)}, "
            f"device={self.w_in.device}, backend={chosen}"
        )


class FFFLayer(torch.nn.Module):
    """A trainable FFF layer: (..., d_in) -> (..., d_out), trained with any torch optimizer.

    The weights are ``nn.Parameter``s ``w_in`` (K, N, d_in), ``b_in`` (K, N) (without ``bias``: None)
    and ``w_out`` (K, N, d_out), initialised as UltraFastBERT initialises its layer: uniform in
    +-1/sqrt(d_in) for ``w_in`` and ``b_in``, +-1/sqrt((D+1) K) for ``w_out`` (the visited neurons).
    The forward pass is ``torch.ops.fffcore.fff`` and its gradients ``fffcore.fff_backward`` along the
    paths the forward pass took, on the fastest backend that computes them for the input (numba for
    CPU tensors, torch for CUDA ones), or on ``backend``. The branch decisions carry no gradient.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        depth: int,
        trees: int = 1,
        activation: str = "gelu",
        bias: bool = True,
        backend: str | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        from fffcore.spec import ACTIVATIONS, node_count

        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        n_nodes = node_count(depth)
        options = {"device": device, "dtype": _torch_dtype(dtype) if dtype is not None else None}
        self.activation, self.backend, self.depth, self.trees = activation, backend, depth, trees
        self.w_in = torch.nn.Parameter(torch.empty(trees, n_nodes, d_in, **options))
        self.b_in = torch.nn.Parameter(torch.empty(trees, n_nodes, **options)) if bias else None
        self.w_out = torch.nn.Parameter(torch.empty(trees, n_nodes, d_out, **options))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """UltraFastBERT's initialisation: uniform in +-1/sqrt(d_in) in, +-1/sqrt((D+1) K) out."""
        trees, _, d_in = self.w_in.shape
        out_bound = ((self.depth + 1) * trees) ** -0.5
        with torch.no_grad():
            self.w_in.uniform_(-(d_in**-0.5), d_in**-0.5)
            if self.b_in is not None:
                self.b_in.uniform_(-(d_in**-0.5), d_in**-0.5)
            self.w_out.uniform_(-out_bound, out_bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.fffcore.fff(x, self.w_in, self.b_in, self.w_out, self.activation, self.backend)

    def params(self) -> FFFParams:
        """The current weights as :class:`~fffcore.FFFParams` (a snapshot of detached copies)."""
        b_in = None if self.b_in is None else self.b_in.detach().clone()
        return FFFParams(self.w_in.detach().clone(), b_in, self.w_out.detach().clone(), self.activation)

    def extra_repr(self) -> str:
        trees, _, d_in = self.w_in.shape
        return (
            f"d_in={d_in}, d_out={self.w_out.shape[2]}, depth={self.depth}, trees={trees}, "
            f"activation={self.activation!r}, bias={self.b_in is not None}, backend={self.backend!r}"
        )


def _recording(x: torch.Tensor) -> bool:
    """Whether torch is tracing or compiling this call (fake and functional tensors are subclasses)."""
    # is_compiling first: torch.compile folds it to True, and cannot trace the tracer's own flag.
    return type(x) is not torch.Tensor or torch.compiler.is_compiling() or torch._C._is_tracing()


def _torch_dtype(dtype: Any) -> Any:
    """A floating torch dtype from a torch dtype, a numpy dtype or a canonical name."""
    if isinstance(dtype, torch.dtype):
        found = dtype
    else:
        try:
            found = torch_dtype(dtype if isinstance(dtype, str) else dtype_name(dtype))
        except TypeError:
            found = None
    if found is None or not found.is_floating_point:
        raise TypeError(f"dtype: expected a floating dtype (torch.float32, 'float64', ...), got {dtype!r}")
    return found
