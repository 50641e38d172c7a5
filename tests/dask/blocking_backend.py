"""A backend plugin that stops a run for good at a known point, for tests that kill ``fff apply``.

The backend ``blocking`` is the reference under another name, except that a call made once a
folder holds a given number of files (an output's chunk folder) never returns: it creates a
marker file and waits to be killed. On a cluster of one single-threaded worker that call holds
the only thread, so no chunk is written after it: the output stays exactly as it was when the
marker appeared, and a test can kill the run there without racing it.

It is loaded as any third-party plugin is, through an entry point of the ``fffcore.backends``
group: :func:`plugin_environment` writes a ``.dist-info`` folder that declares it and returns
the environment under which a subprocess (``fff apply``, and the worker processes it starts)
finds it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from fffcore.hookspecs import hookimpl
from fffcore.params import FFFParams
from fffcore.reference.plugin import ReferenceBackend

#: The folder whose files are counted.
WATCHED_VARIABLE = "BLOCKING_BACKEND_WATCHED"
#: From this many files in the watched folder on, every call with rows blocks.
AFTER_VARIABLE = "BLOCKING_BACKEND_AFTER_FILES"
#: Created by a call as it blocks.
MARKER_VARIABLE = "BLOCKING_BACKEND_MARKER"
#: How long a blocked call waits before giving up, so that a run nobody kills still ends.
GIVE_UP_SECONDS = 600

_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def files_in(folder: Path) -> int:
    """The finished files under ``folder`` (temporary ``*.partial`` files of a write in progress excluded)."""
    if not folder.exists():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".partial"))


class BlockingBackend(ReferenceBackend):
    name = "blocking"
    description = "the reference, blocking for good once a watched folder holds enough files (tests only)"

    def fff(self, x: Any, params: FFFParams) -> np.ndarray:
        watched = os.environ.get(WATCHED_VARIABLE)
        if watched and np.shape(x)[0] > 0 and files_in(Path(watched)) >= int(os.environ[AFTER_VARIABLE]):
            Path(os.environ[MARKER_VARIABLE]).touch()
            time.sleep(GIVE_UP_SECONDS)
            raise RuntimeError(f"blocking backend: not killed within {GIVE_UP_SECONDS} s")
        return super().fff(x, params)


@hookimpl
def register_backends(register: Any) -> None:
    register(BlockingBackend())


def plugin_environment(folder: Path, watched: Path, after_files: int, marker: Path) -> dict[str, str]:
    """``os.environ`` plus what a subprocess needs to load this plugin through its entry point.

    Writes ``folder/fffcore_blocking_backend-0.dist-info`` (the metadata that ``importlib.metadata``
    reads entry points from) and puts ``folder`` and the repository root on ``PYTHONPATH``. Only
    this entry point is loaded (``FFFCORE_LOAD_PLUGINS``), whatever else is installed.
    """
    dist_info = folder / "fffcore_blocking_backend-0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fffcore-blocking-backend\nVersion: 0\n")
    (dist_info / "entry_points.txt").write_text(f"[fffcore.backends]\nblocking = {__name__}\n")
    path = [str(folder), str(_REPOSITORY_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "FFFCORE_LOAD_PLUGINS": "blocking",
        WATCHED_VARIABLE: str(watched),
        AFTER_VARIABLE: str(after_files),
        MARKER_VARIABLE: str(marker),
    }
