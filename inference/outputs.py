"""Writing results so that a killed run never leaves a truncated file: temp file + rename."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """Rename ``tmp`` over ``path`` with the mode a plain ``open()`` would have given it
    (``mkstemp`` creates owner-only files, which would hide results from other users)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda h: h.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as JSON; NaN and infinities become null (Python's ``NaN`` is not JSON)."""
    write_text(path, json.dumps(finite_or_none(obj), indent=1, allow_nan=False) + "\n")


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float, in nested dicts, lists and tuples, replaced by None
    (JSON's null), so every JSON reader accepts the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(value) for value in obj]
    return obj


def write_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda h: np.save(h, array))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    def save(handle: BinaryIO) -> None:
        buffer = io.BytesIO()  # np.savez needs a seekable file; the temp file is one, but be safe
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        handle.write(buffer.getvalue())

    atomic_write(path, save)


def write_plot(path: str | Path, draw: Callable[[str], None]) -> None:
    """``draw(tmp_path)`` saves a figure (matplotlib needs a name with a .png suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        draw(tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
