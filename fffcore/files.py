"""Writing a file whole or not at all, without following a link someone else planted."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``target``, then rename it over ``target``.

    The new file is created exclusively under an unpredictable name (``O_EXCL | O_NOFOLLOW``: it fails on
    anything already there, links included), synced, and renamed over ``target``: a reader sees the old
    file or the new one, never half of one, and a link at ``target`` itself is replaced, not written
    through. On any failure the new file is removed and ``target`` stays as it was; the error is raised
    as it came (``IsADirectoryError`` for a folder at ``target``).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        # hidden, unpredictable, and short enough for the file system's name limit
        temporary = target.with_name(f".{target.name[:200]}.{secrets.token_hex(8)}.partial")
        try:
            descriptor = os.open(temporary, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{target}: cannot create a temporary file beside it")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
