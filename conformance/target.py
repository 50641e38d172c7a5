"""``Target``: the backend under test, and which of its declared capabilities the suite can exercise here."""

from __future__ import annotations

from dataclasses import dataclass, field

from fffcore.conformance.adapters import ADAPTERS
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
    """

    backend: str
    device: str
    combinations: tuple[tuple[str, str], ...]
    activations: tuple[str, ...]
    input_dtypes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    version: str = ""
    notes: tuple[str, ...] = ()

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
    return Target(
        backend=backend,
        device=device,
        combinations=tuple(combinations),
        activations=tuple(chosen.activations),
        input_dtypes={kind: ADAPTERS[kind].dtypes for kind in usable_types},
        version=_version_of(chosen),
        notes=tuple(notes),
    )


def _version_of(backend: object) -> str:
    """The backend's version string for reports; a failing ``version()`` must not stop the suite."""
    try:
        return str(backend.version())  # type: ignore[attr-defined]
    except Exception as error:
        return f"(version() raised {type(error).__name__})"
