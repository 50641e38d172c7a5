"""``Backend``: what a backend declares and implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from fffcore.spec import ACTIVATIONS, REQUIRED_DTYPES

if TYPE_CHECKING:
    from fffcore.params import FFFParams


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here; when not, why (``reason``) and how to fix it (``fix``)."""

    available: bool
    reason: str = ""
    fix: str = ""


AVAILABLE = Availability(True)


class Backend:
    """Base class of every backend, built-in or third-party.

    Capabilities are declared once as class attributes; fffcore uses them to
    check calls before they reach the backend, to choose a backend
    automatically, in ``fff backends``, and in the conformance suite to decide
    which cases apply.

    Attributes:
        name: unique backend name, used in ``backend=...``, ``use_backend`` and
            ``FFFCORE_BACKEND``.
        description: one line for ``fff backends``.
        array_types: the array libraries whose arrays the backend accepts and
            returns (``"numpy"``, ``"torch"``, ``"cupy"``); results come back in
            the input's array type.
        devices: where it computes (``"cpu"``, ``"cuda"``).
        dtypes: the floating dtypes it computes in; must include float32 and float64.
        activations: the activations it implements.
        priority: for automatic choice; among available backends that accept
            the input's array type (and, for numpy input, compute on the CPU),
            the highest priority wins. The reference has 0.
        install: the command that makes the backend available, e.g.
            ``pip install 'fffcore[numba]'``.
        accumulation_dtypes: per parameters' dtype, the dtype the backend
            accumulates its dot products (logits) and its tree sum (output)
            in, e.g. ``{"float16": "float32", "bfloat16": "float32"}`` for a
            backend that computes 16-bit layers in float32 and rounds the
            results once to 16 bits. A missing key means the dtype itself. The
            conformance suite derives its rounding bands from it.
        backward: whether the backend implements :meth:`fff_backward`, the gradients
            of the layer along the paths the forward pass took (``fffcore.fff_backward``,
            training); ``fff backends`` lists it.
        batch_thresholds: row counts from which the backend runs another code path
            (another kernel, several blocks, several threads), e.g. ``(9, 65, 1024)``.
            The conformance suite checks batches just below, at and just above each,
            in every run.

    fffcore validates every call before it reaches ``cmm`` or ``fff``: the
    parameters are an :class:`fffcore.FFFParams` whose dtype and activation the
    backend declares; ``x`` is an array of a declared array type with a real
    floating dtype and shape ``(B, d_in)`` (leading dimensions are flattened
    before and restored after the call; ``B`` may be 0). The backend converts
    ``x`` to ``params.dtype`` itself, must never write to ``x`` or the
    parameters, and must be safe to call from several threads at once.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    array_types: ClassVar[tuple[str, ...]] = ("numpy",)
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    dtypes: ClassVar[tuple[str, ...]] = REQUIRED_DTYPES
    activations: ClassVar[tuple[str, ...]] = ACTIVATIONS
    priority: ClassVar[int] = 0
    install: ClassVar[str] = ""
    accumulation_dtypes: ClassVar[dict[str, str]] = {}
    batch_thresholds: ClassVar[tuple[int, ...]] = ()
    backward: ClassVar[bool] = False

    def availability(self) -> Availability:
        """Whether the backend can run here. Must not raise; called at most once per process."""
        return AVAILABLE

    def version(self) -> str:
        """Version of the library behind the backend, for reports; empty when none."""
        return ""

    def cmm(self, x: Any, params: FFFParams) -> tuple[Any, Any]:
        """Conditional matrix multiplication of every row of ``x``.

        Args:
            x: (B, d_in) floating array of a declared array type.
            params: validated parameters, ``params.dtype`` declared by the backend.

        Returns:
            ``(logits, nodes)``: logits (B, K, D+1) in ``params.dtype`` and the
            visited nodes (B, K, D+1) as int64 heap indices within each tree,
            both in the input's array type and on its device.
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement cmm")

    def fff(self, x: Any, params: FFFParams) -> Any:
        """The FFF layer output of every row of ``x``.

        Args:
            x: (B, d_in) floating array of a declared array type.
            params: validated parameters.

        Returns:
            (B, d_out) array in ``params.dtype``, in the input's array type and on its device.
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement fff")

    def fff_backward(self, x: Any, params: FFFParams, grad_y: Any) -> tuple[Any, Any, Any, Any]:
        """Gradients of a loss along the paths the forward pass of ``x`` takes (see ``fffcore.backward``).

        Declared with ``backward = True``. Called with the checks of :meth:`fff` made, and ``grad_y``
        of shape (B, d_out), of a floating dtype, of the same array type as ``x``.

        Returns:
            ``(grad_x (B, d_in), grad_w_in (K, N, d_in), grad_b_in (K, N) or None for a layer
            without bias, grad_w_out (K, N, d_out))`` in ``params.dtype``, in the input's array type.
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement fff_backward")

    def warmup(self, dtypes: Sequence[str]) -> None:
        """Optional: compile or load now whatever the first calls in these dtypes (ones the backend
        declares) would, so that they run at full speed (``fffcore.warmup``, ``fff warmup``).
        The default does nothing: a backend without compiled kernels has nothing to prepare."""

    def prepare_fff(self, params: FFFParams) -> Callable[[Any, FFFParams], Any] | None:
        """Optional: a function ``(x, params) -> y`` doing what :meth:`fff` does, for these parameters.

        fffcore asks once per parameters object (and array type and device of ``x``) and keeps
        the answer as long as the parameters live, then calls it instead of :meth:`fff`, with
        the same arguments and the same checks made beforehand. A backend whose per-call
        set-up (looking up arguments derived from the parameters, choosing a kernel) is a
        noticeable share of a small call can do that set-up here once. The function must not
        keep a reference to ``params`` itself (it gets them on every call), or the parameters
        would never be freed. None, the default, means: call :meth:`fff`.
        """
        return None
