"""Optional backends without their libraries: listed as unavailable with the reason and the fix, never raising."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import fffcore
from fffcore import registry as registry_module

OPTIONAL = {"numba": "numba", "torch": "torch", "cupy": "cupy"}

# Run in a fresh interpreter in which importing numba, torch and cupy fails, as on a machine
# without them; the registry must still list every backend, and numpy calls must still work.
_WITHOUT_LIBRARIES = """
import builtins, importlib.util, json, sys
blocked = {"numba", "torch", "cupy"}
real_import, real_find_spec = builtins.__import__, importlib.util.find_spec
def blocking_import(name, *args, **kwargs):
    if name.split(".")[0] in blocked:
        raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)
def blocking_find_spec(name, *args, **kwargs):
    return None if name.split(".")[0] in blocked else real_find_spec(name, *args, **kwargs)
builtins.__import__, importlib.util.find_spec = blocking_import, blocking_find_spec
import numpy as np, fffcore
rows = {r.name: [r.available, r.reason, r.fix] for r in fffcore.list_backends()}
params = fffcore.FFFParams.random(4, 3, 2, seed=0)
y = fffcore.fff(np.ones((2, 4), np.float32), params)
print(json.dumps({"rows": rows, "shape": list(y.shape), "loaded": sorted(m for m in blocked if m in sys.modules)}))
"""


def test_listing_without_numba_torch_cupy():
    import json

    done = subprocess.run([sys.executable, "-c", _WITHOUT_LIBRARIES], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for name, library in OPTIONAL.items():
        available, reason, fix = report["rows"][name]
        assert not available
        assert library in reason and "not installed" in reason
        assert f"fffcore[{name}]" in fix
    assert report["rows"]["reference"][0] is True
    assert report["shape"] == [2, 3]
    assert report["loaded"] == []


@pytest.mark.parametrize("library", ["numba", "torch"])
def test_broken_install_is_unavailable_and_numpy_calls_still_work(monkeypatch, library):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == library or name.startswith(library + "."):
            raise OSError(f"lib{library}.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    # Installed (find_spec finds it) but failing to load, as with a missing shared library.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object() if name == library else None)
    monkeypatch.delitem(sys.modules, library, raising=False)  # so the import statement reaches the hook
    monkeypatch.setattr(builtins, "__import__", broken)
    loaded = registry_module.load_registry()
    status = loaded.availability(library)
    assert not status.available
    assert status.reason == (
        f"{library} is installed but fails to import: OSError: lib{library}.so: cannot open shared object file"
    )
    assert f"fffcore[{library}]" in status.fix
    monkeypatch.setattr(registry_module, "loaded", loaded)
    y = fffcore.fff(np.ones((1, 4), np.float32), fffcore.FFFParams.random(4, 2, 1, seed=0))
    assert y.shape == (1, 2)
