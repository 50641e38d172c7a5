"""``Target``: the backend under test, and which of its declared capabilities the suite can exercise here."""

from __future__ import annotations

from dataclasses import dataclass, field

from fffcore.bridging import find_bridge
from fffcore.conformance.adapters import ADAPTERS
from fffcore.conformance.tolerances import max_checkable_d_in
from fffcore.spec import FLOATING_DTYPES


@dataclass(frozen=True)
class Target:
    """What the suite runs on.

    Attributes:
        backend: the registered backend name; calls go through ``fffcore.fff(..., backend=backend)``.
        device: where native arrays (torch tensors, cupy arrays) are built.
        combinations: (params dtype, array type) pairs to draw from.
        activations: the activations the backend declares.
        input_dtypes: per array type, the dtypes inputs may come in (any floating
            dtype is legal input; the backend converts it).
        version: the backend's version string, for reports.
        notes: capabilities declared but not exercised here, with the reason.
        accumulation_dtypes: the backend's ``Backend.accumulation_dtypes``: per parameters'
            dtype, the dtype its dot products and tree sums accumulate in (missing: the dtype itself).
        batch_thresholds: the backend's ``Backend.batch_thresholds``: row counts where it
            switches code paths, each checked just below, at and above.
        bridged_array_types: array types the backend does not take itself but gets from the
            core through a zero-copy bridge (:mod:`fffcore.bridging`); tested like its own, since
            that is how callers holding such arrays reach it.
        backward: the backend declares ``backward`` (``fffcore.fff_backward``); the gradient
            properties run only then.
    """

    backend: str
    device: str
    combinations: tuple[tuple[str, str], ...]
    activations: tuple[str, ...]
    input_dtypes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    version: str = ""
    notes: tuple[str, ...] = ()
    accumulation_dtypes: dict[str, str] = field(default_factory=dict)
    bridged_array_types: tuple[str, ...] = ()
    backward: bool = False
    batch_thresholds: tuple[int, ...] = ()

    def describe_array_types(self) -> str:
        """The array types tested, bridged ones marked, e.g. ``"numpy, torch (bridged)"``."""
        return ", ".join(f"{kind} (bridged)" if kind in self.bridged_array_types else kind for kind in self.array_types)

    def accumulation(self, dtype: str) -> str:
        """The dtype the backend accumulates in for ``dtype`` parameters."""
        return self.accumulation_dtypes.get(dtype, dtype)

    def max_d_in(self, dtype: str) -> int | None:
        """Largest d_in worth drawing for ``dtype`` (see :func:`fffcore.conformance.tolerances.max_checkable_d_in`)."""
        return max_checkable_d_in(dtype, self.accumulation(dtype))

    def params_array_types(self, dtype: str, array_type: str) -> tuple[str, ...]:
        """The array types the parameters of a ``dtype`` case with ``array_type`` input come in: numpy
        where the backend takes numpy arrays (first, so that draws shrink to it), and the input's own
        library (as a torch model holds them); bfloat16 only in the input's library, numpy having none."""
        numpy_params = "numpy" in self.array_types and dtype != "bfloat16"
        if not numpy_params:
            return (array_type,)
        return ("numpy",) if array_type == "numpy" else ("numpy", array_type)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(dtype for dtype, _ in self.combinations))

    @property
    def array_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(kind for _, kind in self.combinations))


def resolve_target(backend: str, *, device: str | None = None, dtypes: tuple[str, ...] | None = None) -> Target:
    """Look the backend up and work out what can be tested here.

    Args:
        backend: a registered backend name.
        device: one of the backend's declared devices; default: ``"cpu"`` when
            declared, else the first declared device.
        dtypes: restrict the parameters' dtypes to these (each must be declared).

    Raises:
        fffcore.UnknownBackendError, fffcore.BackendUnavailableError: from the registry.
        ValueError: a device or dtype the backend does not declare, or nothing left to test.
    """
    from fffcore import get_backend

    chosen = get_backend(backend)
    declared_devices = tuple(chosen.devices)
    if device is None:
        device = "cpu" if "cpu" in declared_devices else declared_devices[0]
    elif device not in declared_devices:
        raise ValueError(f"device: backend {backend!r} declares {', '.join(declared_devices)}, got {device!r}")
    wanted = tuple(chosen.dtypes)
    if dtypes:
        unknown = [d for d in dtypes if d not in FLOATING_DTYPES]
        undeclared = [d for d in dtypes if d not in chosen.dtypes]
        if unknown or undeclared:
            raise ValueError(
                f"dtype: backend {backend!r} declares {', '.join(chosen.dtypes)}, got {', '.join(unknown + undeclared)}"
            )
        wanted = tuple(dtypes)

    notes: list[str] = []
    usable_types: list[str] = []
    for kind in chosen.array_types:
        adapter = ADAPTERS.get(kind)
        if adapter is None:
            notes.append(f"{kind} arrays not tested: the suite has no adapter for them")
            continue
        # numpy arrays always stay on the host; native arrays go to the chosen device
        reason = adapter.unavailable_reason("cpu" if kind == "numpy" else device)
        if reason:
            notes.append(f"{kind} arrays not tested: {reason}")
            continue
        usable_types.append(kind)
    bridged: list[str] = []
    for kind, adapter in ADAPTERS.items():
        # Array types the core hands over through a zero-copy bridge (torch CPU tensors to a numpy
        # backend, torch CUDA tensors to a cupy one): the caller's path, tested like native ones.
        if kind in chosen.array_types or find_bridge(kind, device, chosen.array_types) is None:
            continue
        reason = adapter.unavailable_reason(device)
        if reason:
            notes.append(f"{kind} arrays (bridged) not tested: {reason}")
            continue
        usable_types.append(kind)
        bridged.append(kind)
    if device != "cpu" and not any(kind != "numpy" for kind in usable_types):
        # numpy inputs stay on the host: nothing would run on the requested device
        raise ValueError(f"device: nothing can run on {device} here; " + "; ".join(notes))
    combinations = []
    for dtype in wanted:
        kinds = [kind for kind in usable_types if dtype in ADAPTERS[kind].dtypes]
        if not kinds:
            notes.append(f"{dtype} not tested: none of the usable array types ({', '.join(usable_types)}) holds it")
        combinations += [(dtype, kind) for kind in kinds]
    if not combinations:
        raise ValueError(f"backend {backend!r}: nothing to test here; " + "; ".join(notes))
    accumulation = _accumulation_dtypes(chosen, backend)
    for dtype in dict.fromkeys(d for d, _ in combinations):
        cap = max_checkable_d_in(dtype, accumulation.get(dtype))
        if cap is not None:
            notes.append(
                f"{dtype}: d_in drawn up to {cap} only: the backend accumulates in {dtype} itself, whose "
                f"rounding band gamma(d_in + 3, u) exceeds 0.05 of the logit's scale beyond that "
                f"(declare accumulation_dtypes if it accumulates in a wider dtype)"
            )
    return Target(
        backend=backend,
        device=device,
        combinations=tuple(combinations),
        activations=tuple(chosen.activations),
        input_dtypes={kind: ADAPTERS[kind].dtypes for kind in usable_types},
        version=_version_of(chosen),
        notes=tuple(notes),
        accumulation_dtypes=accumulation,
        bridged_array_types=tuple(bridged),
        batch_thresholds=_batch_thresholds(chosen, backend),
        backward=bool(getattr(chosen, "backward", False)),
    )


def _accumulation_dtypes(backend: object, name: str) -> dict[str, str]:
    """The backend's declared accumulation dtypes, checked: floating, at least as precise as the storage dtype."""
    from fffcore.conformance.tolerances import accumulation_roundoff

    declared = dict(getattr(backend, "accumulation_dtypes", {}) or {})
    for dtype, accumulation in declared.items():
        if dtype not in FLOATING_DTYPES:
            raise ValueError(f"accumulation_dtypes of backend {name!r}: expected dtype keys, got {dtype!r}")
        try:
            accumulation_roundoff(dtype, accumulation)
        except ValueError as error:
            raise ValueError(f"accumulation_dtypes of backend {name!r}: {error}") from None
    return declared


def _version_of(backend: object) -> str:
    """The backend's version string for reports; a failing ``version()`` must not stop the suite."""
    try:
        return str(backend.version())  # type: ignore[attr-defined]
    except Exception as error:
        return f"(version() raised {type(error).__name__})"


def _batch_thresholds(backend: object, name: str) -> tuple[int, ...]:
    """The backend's declared thresholds, checked: positive ints."""
    declared = tuple(getattr(backend, "batch_thresholds", ()) or ())
    for value in declared:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"batch_thresholds of backend {name!r}: expected positive ints, got {value!r}")
    return declared
