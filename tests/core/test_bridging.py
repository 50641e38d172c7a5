"""Zero-copy bridging: torch tensors reach numpy backends as views of their memory, results come back as tensors."""

from __future__ import annotations

import numpy as np
import pytest

import fffcore
from fffcore import FFFParams
from fffcore.arrays import array_device
from fffcore.bridging import find_bridge
from fffcore.plan import automatic_backend
from tests.fakes import FakeBackend, plugin_with

torch = pytest.importorskip("torch", reason="bridging torch tensors needs PyTorch: pip install 'fffcore[torch]'")

PARAMS = FFFParams.random(6, 4, 3, seed=0)


@pytest.fixture
def recorder(use_registry, monkeypatch):
    """A numpy-only CPU backend that records what it receives, as the only backend."""
    monkeypatch.delenv("FFFCORE_BACKEND", raising=False)
    backend = FakeBackend("recorder", priority=1000)
    use_registry(("recorder", plugin_with(backend)))
    return backend


def _pointer(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def test_a_cpu_tensor_reaches_a_numpy_backend_as_a_view_and_the_result_comes_back_as_its_memory(recorder):
    x = torch.randn(3, 5, 6)
    y = fffcore.fff(x, PARAMS)
    ((received, _),) = recorder.received
    assert isinstance(received, np.ndarray)
    assert _pointer(received) == x.data_ptr()  # no Tensor.numpy() copy, no .cpu() copy: the same memory
    assert isinstance(y, torch.Tensor) and y.shape == (3, 5, 4) and y.dtype == torch.float32
    expected = fffcore.fff(x.numpy(), PARAMS, backend="reference")
    np.testing.assert_array_equal(y.numpy(), expected)


def test_the_result_tensor_shares_the_backends_output_memory(recorder, monkeypatch):
    produced = []
    original = FakeBackend.fff

    def keep(self, x, params):
        result = original(self, x, params)
        produced.append(result)
        return result

    monkeypatch.setattr(FakeBackend, "fff", keep)
    y = fffcore.fff(torch.randn(4, 6), PARAMS)
    assert y.data_ptr() == _pointer(produced[0])  # torch.from_numpy: no copy on the way back


def test_cpu_tensor_parameters_reach_a_numpy_backend_as_views_converted_once(recorder):
    tensors = FFFParams(*(torch.tensor(a) for a in (PARAMS.w_in, PARAMS.b_in, PARAMS.w_out)))
    x = torch.randn(2, 6)
    fffcore.fff(x, tensors)
    fffcore.fff(x, tensors)
    (_, first), (_, second) = recorder.received
    assert first is second  # bridged once per parameters object
    assert first.array_type == "numpy"
    assert _pointer(first.w_in) == tensors.w_in.data_ptr()
    assert _pointer(first.w_out) == tensors.w_out.data_ptr()


def test_bfloat16_input_is_converted_once_by_torch_to_the_layers_dtype(recorder):
    x = torch.randn(2, 6).to(torch.bfloat16)
    y = fffcore.fff(x, PARAMS)
    ((received, _),) = recorder.received
    assert received.dtype == np.float32  # numpy has no bfloat16: torch converted it to the computation's dtype
    assert y.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), fffcore.fff(x.float().numpy(), PARAMS, backend="reference"))


def test_strided_tensors_are_taken_as_strided_views(recorder):
    wide = torch.randn(4, 12)
    x = wide[:, ::2]
    y = fffcore.fff(x, PARAMS)
    ((received, _),) = recorder.received
    assert _pointer(received) == x.data_ptr() and received.strides == (48, 8)  # the backend decides to copy
    np.testing.assert_array_equal(y.numpy(), fffcore.fff(x.numpy(), PARAMS, backend="reference"))


def test_an_input_that_requires_grad_gives_a_detached_result(recorder):
    x = torch.randn(2, 6, requires_grad=True)
    y = fffcore.fff(x, PARAMS)
    assert not y.requires_grad and y.grad_fn is None
    np.testing.assert_array_equal(y.numpy(), fffcore.fff(x.detach().numpy(), PARAMS, backend="reference"))


def test_cmm_results_come_back_as_tensors(recorder):
    x = torch.randn(2, 3, 6)
    logits, nodes = fffcore.cmm(x, PARAMS)
    assert isinstance(logits, torch.Tensor) and isinstance(nodes, torch.Tensor)
    assert logits.shape == nodes.shape == (2, 3, 1, 4) and nodes.dtype == torch.int64
    expected = fffcore.cmm(x.numpy(), PARAMS, backend="reference")
    np.testing.assert_array_equal(nodes.numpy(), expected.nodes)


def test_inputs_are_never_written(recorder):
    x = torch.randn(3, 6)
    before = x.clone()
    fffcore.fff(x, PARAMS)
    assert torch.equal(x, before)


def test_a_tensor_on_another_device_is_a_type_error_naming_both_devices(use_registry, monkeypatch):
    # a backend that computes on cuda only, given a CPU tensor (a machine without a GPU has no other device)
    monkeypatch.delenv("FFFCORE_BACKEND", raising=False)
    use_registry(("elsewhere", plugin_with(FakeBackend("elsewhere", devices=("cuda",), array_types=("torch",)))))
    with pytest.raises(
        TypeError, match=r"x: backend 'elsewhere' computes on cuda with torch arrays, got a torch tensor on cpu"
    ):
        fffcore.fff(torch.ones(2, 6), PARAMS, backend="elsewhere")


def test_a_tensor_on_the_meta_device_is_a_type_error_saying_it_holds_no_values(recorder):
    x = torch.empty(2, 6, device="meta")
    for backend in ("recorder", None):
        with pytest.raises(TypeError, match=r"^x: a torch tensor on the meta device holds no values"):
            fffcore.fff(x, PARAMS, backend=backend)


def test_a_sparse_tensor_is_a_type_error(recorder):
    x = torch.randn(2, 6).to_sparse()
    with pytest.raises(TypeError, match="x: expected a dense"):
        fffcore.fff(x, PARAMS, backend="recorder")


def test_the_bridge_table():
    assert find_bridge("torch", "cpu", ("numpy",)).target == "numpy"
    assert find_bridge("torch", "cuda", ("cupy", "numpy")).target == "cupy"
    assert find_bridge("cupy", "cuda", ("torch", "numpy")).target == "torch"
    assert find_bridge("numpy", "cpu", ("torch",)).target == "torch"
    assert find_bridge("torch", "cuda", ("numpy",)) is None  # that would be a host round trip
    assert find_bridge("torch", "cpu", ("cupy",)) is None
    assert array_device(torch.ones(1), "torch") == "cpu" and array_device(np.ones(1), "numpy") == "cpu"


# --- automatic choice by device and dtype -----------------------------------------------------------


@pytest.fixture
def devices_registry(use_registry, monkeypatch):
    """Stand-ins for numba (numpy, CPU), cupy (cupy and numpy, CUDA) and torch (torch and numpy, both)."""
    monkeypatch.delenv("FFFCORE_BACKEND", raising=False)
    backends = {
        "cpu_fast": FakeBackend("cpu_fast", priority=1100, array_types=("numpy",), devices=("cpu",)),
        "cuda_fast": FakeBackend("cuda_fast", priority=1080, array_types=("cupy", "numpy"), devices=("cuda",)),
        "both": FakeBackend("both", priority=1050, array_types=("torch", "numpy"), devices=("cpu", "cuda")),
    }
    backends["both"].dtypes = ("float16", "bfloat16", "float32", "float64")  # type: ignore[misc]
    use_registry(("devices", plugin_with(*backends.values())))
    return backends


@pytest.mark.parametrize(
    ("kind", "device", "dtype", "expected"),
    [
        ("numpy", "cpu", "float32", "cpu_fast"),
        ("torch", "cpu", "float32", "cpu_fast"),  # bridged to numpy: the fastest CPU backend
        ("torch", "cpu", "float64", "cpu_fast"),
        ("torch", "cpu", "bfloat16", "both"),  # the CPU backend has no bfloat16
        ("torch", "cuda", "float32", "cuda_fast"),  # bridged to cupy through DLPack
        ("torch", "cuda", "bfloat16", "both"),
        ("cupy", "cuda", "float32", "cuda_fast"),
    ],
)
def test_automatic_choice_by_device_and_dtype(devices_registry, kind, device, dtype, expected):
    params = PARAMS if dtype in ("float32", "float64") else None
    if params is None:
        params = FFFParams(
            *(torch.tensor(a).to(getattr(torch, dtype)) for a in (PARAMS.w_in, PARAMS.b_in, PARAMS.w_out))
        )
    elif dtype == "float64":
        params = PARAMS.astype("float64")
    assert automatic_backend(kind, device, params).name == expected


def test_cuda_tensors_fall_back_to_the_backend_that_computes_on_cuda(devices_registry):
    devices_registry["cuda_fast"]._available = False
    assert automatic_backend("torch", "cuda", PARAMS).name == "both"


def test_numpy_input_never_goes_to_a_cuda_backend_automatically(devices_registry):
    devices_registry["cpu_fast"]._available = False
    assert automatic_backend("numpy", "cpu", PARAMS).name == "both"


def test_resolve_backend_answers_without_running(devices_registry):
    x = torch.randn(2, 6)
    assert fffcore.resolve_backend(x, PARAMS).name == "cpu_fast"
    assert fffcore.resolve_backend(x, PARAMS, backend="both").name == "both"
    assert devices_registry["cpu_fast"].calls == []


def test_builtin_automatic_choice_for_cpu_tensors():
    available = {row.name for row in fffcore.list_backends() if row.available}
    x = torch.randn(2, 6)
    expected = "numba" if "numba" in available else "torch"
    assert fffcore.resolve_backend(x, PARAMS).name == expected
    assert fffcore.resolve_backend(x, PARAMS.astype("float64")).name == expected


# --- the CUDA half: runs where a GPU is present ------------------------------------------------------

cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)"
)


def _cupy_available() -> bool:
    return any(row.name == "cupy" and row.available for row in fffcore.list_backends())


@cuda
def test_cuda_tensors_reach_cupy_without_a_host_copy(monkeypatch):
    if not _cupy_available():
        pytest.skip("the cupy backend is not available here")
    from fffcore.backends.cupy.plugin import CupyBackend

    seen = []
    original = CupyBackend.fff

    def record(self, x, params):
        seen.append(x)
        result = original(self, x, params)
        seen.append(result)
        return result

    monkeypatch.setattr(CupyBackend, "fff", record)
    monkeypatch.setattr(np, "asarray", _forbidden_host_copy(np.asarray))  # any trip through the host fails
    x = torch.randn(64, 6, device="cuda")
    from fffcore.torch import to_torch

    params = to_torch(PARAMS, "cuda")
    y = fffcore.fff(x, params)
    received, produced = seen
    assert type(received).__module__.startswith("cupy")
    assert int(received.data.ptr) == x.data_ptr()  # DLPack: the same device memory
    assert isinstance(y, torch.Tensor) and y.device == x.device
    assert y.data_ptr() == int(produced.data.ptr)
    assert fffcore.resolve_backend(x, params).name == "cupy"
    monkeypatch.undo()
    expected = fffcore.fff(x.cpu().numpy(), PARAMS, backend="reference")
    np.testing.assert_allclose(y.cpu().numpy(), expected, rtol=1e-5, atol=1e-6)


@cuda
def test_strided_empty_and_side_stream_cuda_tensors_reach_cupy_correctly():
    if not _cupy_available():
        pytest.skip("the cupy backend is not available here")
    from fffcore.torch import to_torch

    params = to_torch(PARAMS, "cuda")
    wide = torch.randn(64, 12, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # not the default stream: cupy's work runs on it, its output torch's
        on_side = fffcore.fff(2 * wide[:32, :6], params)
    side.synchronize()
    for x, y in ((wide[:, ::2], fffcore.fff(wide[:, ::2], params)), (2 * wide[:32, :6], on_side)):
        expected = fffcore.fff(x.cpu().numpy(), PARAMS, backend="reference")
        # float32 logits of 6 terms and a 4-level tree sum: far inside 1e-5 of values of order 1.
        np.testing.assert_allclose(y.cpu().numpy(), expected, rtol=1e-5, atol=1e-5)
    empty = fffcore.fff(torch.empty(0, 6, device="cuda"), params)
    assert empty.shape == (0, 4) and empty.device.type == "cuda"


@cuda
def test_cuda_tensors_on_a_cpu_backend_are_a_type_error():
    x = torch.randn(2, 6, device="cuda")
    with pytest.raises(
        TypeError, match=r"x: backend 'reference' computes on cpu with numpy arrays, got a torch tensor on cuda"
    ):
        fffcore.fff(x, PARAMS, backend="reference")


def _forbidden_host_copy(original):
    def guarded(value, *args, **kwargs):
        if type(value).__module__.startswith(("cupy", "torch")):
            raise AssertionError(f"host copy of a {type(value).__module__} array")
        return original(value, *args, **kwargs)

    return guarded


class TorchOnlyRecorder(FakeBackend):
    """Takes torch tensors only: numpy callers reach it through ``torch.from_numpy``."""

    def fff(self, x, params):
        self.received.append((x, params))
        plain = FFFParams(*(None if w is None else w.numpy() for w in (params.w_in, params.b_in, params.w_out)))
        return torch.from_numpy(super(FakeBackend, self).fff(x.numpy(), plain))


@pytest.mark.parametrize("layout", ["byteswapped", "readonly"])
def test_numpy_arrays_torch_cannot_share_are_copied_once_for_a_torch_backend(layout, use_registry, monkeypatch):
    monkeypatch.delenv("FFFCORE_BACKEND", raising=False)
    backend = TorchOnlyRecorder("torch-only", priority=1000, array_types=("torch",))
    use_registry(("torch-only", plugin_with(backend)))
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    given = x.astype(x.dtype.newbyteorder()) if layout == "byteswapped" else x.copy()
    given.flags.writeable = layout != "readonly"
    before = given.tobytes()
    y = fffcore.fff(given, PARAMS)
    ((received, _),) = backend.received
    assert isinstance(received, torch.Tensor) and received.dtype == torch.float32
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, fffcore.fff(x, PARAMS, backend="reference"))
    assert given.tobytes() == before


# --- CUDA streams other than the default one --------------------------------------------------------


class _StandInCupy:
    """Just enough of cupy.cuda for the stream context: what was entered, what was allocated."""

    def __init__(self) -> None:
        import types

        self.entered: list[tuple[str, object]] = []
        self.allocator = None
        self.current_stream = 0
        outer = self

        class Device:
            def __init__(self, index=None):
                self.id = 3 if index is None else index

            def __enter__(self):
                outer.entered.append(("device", self.id))

            def __exit__(self, *args):
                outer.entered.append(("device exit", self.id))

        class ExternalStream:
            def __init__(self, ptr, device_id=-1):
                self.ptr, self.device_id = ptr, device_id

            def __enter__(self):
                outer.entered.append(("stream", (self.ptr, self.device_id)))
                outer.current_stream = self.ptr

            def __exit__(self, *args):
                outer.current_stream = 0

        class UsingAllocator:
            def __init__(self, allocator):
                self.new = allocator

            def __enter__(self):
                outer.allocator = self.new

            def __exit__(self, *args):
                outer.allocator = None

        class UnownedMemory:
            def __init__(self, ptr, size, owner, device_id):
                self.ptr, self.size, self.owner, self.device_id = ptr, size, owner, device_id

        class MemoryPointer:
            def __init__(self, memory, offset):
                self.mem, self.ptr = memory, memory.ptr + offset

        self.cuda = types.SimpleNamespace(
            Device=Device,
            ExternalStream=ExternalStream,
            using_allocator=UsingAllocator,
            get_current_stream=lambda device_id=-1: types.SimpleNamespace(ptr=outer.current_stream),
            UnownedMemory=UnownedMemory,
            MemoryPointer=MemoryPointer,
        )


def test_on_a_side_stream_cupy_runs_on_torchs_stream_with_memory_torch_allocated(monkeypatch):
    import sys
    import types

    from fffcore import bridging

    cupy = _StandInCupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    allocated = []

    def torch_bytes(size, device_index):  # stands for torch.empty on the CUDA device
        allocated.append((size, device_index, cupy.current_stream))
        return torch.zeros(size, dtype=torch.uint8)

    monkeypatch.setattr(bridging, "_torch_bytes", torch_bytes)
    x = types.SimpleNamespace(device=types.SimpleNamespace(index=3))

    monkeypatch.setattr(bridging, "_current_stream", lambda torch_module, index: 0)
    assert bridging._torch_stream_context(x) is None  # the default stream is cupy's too: nothing to do

    monkeypatch.setattr(bridging, "_current_stream", lambda torch_module, index: 0x5EED)
    bridge = find_bridge("torch", "cuda", ("cupy",))
    with bridge.call_context(x):
        assert ("stream", (0x5EED, 3)) in cupy.entered and cupy.current_stream == 0x5EED
        pointer = cupy.allocator(24)
        assert allocated == [(24, 3, 0x5EED)]  # a tensor of torch's, while cupy's stream is torch's
        owner = pointer.mem.owner
        assert pointer.ptr == owner.data_ptr() and pointer.mem.size == 24
        # The result comes back as the tensor torch allocated, viewed with the result's dtype and shape.
        result = types.SimpleNamespace(
            data=types.SimpleNamespace(ptr=pointer.ptr),
            flags=types.SimpleNamespace(c_contiguous=True),
            nbytes=24,
            dtype=np.dtype("float32"),
            shape=(2, 3),
        )
        y = bridge.to_source(result)
        assert y.data_ptr() == owner.data_ptr() and y.shape == (2, 3) and y.dtype == torch.float32
    assert cupy.allocator is None and cupy.current_stream == 0  # all undone after the call
    assert bridging._call_allocations.get() is None


@cuda
def test_a_cuda_graph_captures_a_cupy_call_and_replays_it():
    if not _cupy_available():
        pytest.skip("the cupy backend is not available here")
    from fffcore.torch import to_torch

    params = to_torch(PARAMS, "cuda")
    static_x = torch.randn(64, 6, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch asks before a capture
        for _ in range(3):
            fffcore.fff(static_x, params, backend="cupy")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = fffcore.fff(static_x, params, backend="cupy")
    for _ in range(2):
        x = torch.randn(64, 6, device="cuda")
        static_x.copy_(x)
        graph.replay()
        torch.testing.assert_close(static_y, fffcore.fff(x, params, backend="cupy"), rtol=0, atol=0)
