"""Writing results so that a killed run never leaves a truncated file: temp file + rename;
and the output directory as one set (below), so it never holds a mix of two runs."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import io
import json
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
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
        _file_written(path)
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
        _file_written(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the output directory as one set -------------------------------------------------------
#
# ``--out DIR`` is checked before any data is read (``check_out``) and locked for the whole run
# (``locked_out``: an exclusive flock on the sibling ``.DIR.lock``, so a second run to DIR is
# refused). ``write_set`` writes every file into a temporary sibling ``.DIR.new-*`` and then
# swaps it with DIR in one ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks
# it), so a reader, a signal, a kill or a full disk sees the old set or the new one. What a
# kill -9 leaves (a ``.DIR.new-*`` or ``.DIR.old-*``) is cleaned up by the next run's lock.

OUTPUT_NAMES = frozenset(
    {"trace.csv", "trace.json", "labels.npy", "params.npz", "summary.json", "trace.png"}
    | {"compare.png", "select.csv", "select.png", "model_state.npz", "responsibilities.npy"}
    | {"log_likelihood.npy", "predict.json"}  # and labels.npy, responsibilities.npy: predict
    | {"encoder.pt"}  # an amortised guide's network
    | {"guides"}  # compare: guides/LABEL/labels.npy and params.npz
)
# Test hook: "SIG[,SIG...]:N" sends those signals to this process once N files of a set are
# written, so a test can interrupt the writing itself at a chosen file.
SIGNALS_DURING_WRITE_ENV = "MIXEM_TEST_SIGNALS_DURING_WRITE"
_pending: dict[Path, int] = {}  # set directories being written -> files written so far
_held_locks: set[Path] = set()


def _target(out: str | Path) -> Path:
    """The directory ``--out`` names, its symlinks (a link to DIR stays a link) resolved."""
    return Path(os.path.abspath(out)).resolve()


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_out(out: str | Path) -> None:
    """Refuse an ``--out`` that a fit could not write, before anything is read or written.

    Raises:
        MixemError: an existing non-directory, a directory holding other files than a mixem
            output set (the swap replaces the whole directory), or a parent that cannot be
            written (read-only, not a directory).
    """
    from inference.errors import MixemError

    target = _target(out)
    if target.exists() and not target.is_dir():
        raise MixemError(f"--out {out}: exists and is not a directory")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in OUTPUT_NAMES)
        if foreign:
            raise MixemError(
                f"--out {out}: holds files that are not mixem outputs ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory"
            )
    ancestor = _existing_ancestor(target.parent)
    if not ancestor.is_dir():
        raise MixemError(f"--out {out}: {ancestor} is not a directory")
    try:  # the real test (os.access says yes to root on a read-only mount)
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".mixem-probe-"))
    except OSError as err:
        raise MixemError(f"--out {out}: cannot write in {ancestor} ({err.strerror})") from err


def _clean_stale(target: Path) -> None:
    """Remove what a killed run left beside ``target``; put an old set back if the kill came
    between the two renames of a swap without RENAME_EXCHANGE."""
    parent, name = target.parent, target.name
    for stale in sorted(parent.glob(f".{name}.new-*")):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in sorted(parent.glob(f".{name}.old-*")):
        if not target.exists():
            os.rename(stale, target)
        else:
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def locked_out(out: str | Path) -> Iterator[None]:
    """Hold ``--out``'s lock for the run; raises ``MixemError`` if another run holds it."""
    from inference.errors import MixemError

    check_out(out)
    target = _target(out)
    created = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    lock_path = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise MixemError(
                    f"--out {out}: another mixem run is writing there (it holds {lock_path}); "
                    "wait for it to finish or choose another --out"
                ) from None
            try:  # the holder before us may have unlinked the file we opened: lock a live one
                if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        _held_locks.add(lock_path)
        _clean_stale(target)
    except OSError as err:
        raise MixemError(f"--out {out}: cannot lock it ({err.strerror})") from err
    try:
        yield
    finally:
        _held_locks.discard(lock_path)
        lock_path.unlink(missing_ok=True)
        os.close(fd)
        for directory in created:  # parents made for the lock but never filled
            if directory.exists() and not any(directory.iterdir()):
                directory.rmdir()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_set(out: str | Path, write_files: Callable[[Path], object]) -> None:
    """``write_files(tmp)`` writes the set into a temporary sibling of ``out``, which then
    replaces ``out`` as a whole (the old set is removed only once the new one is in place).

    Raises:
        MixemError: the set could not be written (a full disk, ...); ``out`` is left as it was.
    """
    from inference.errors import MixemError

    target = _target(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new-"))
    _pending[tmp] = 0
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        write_files(tmp)
        _fsync_dir(tmp)
        del _pending[tmp]  # from here on the swap must not be undone halfway by a signal
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp)  # now the old set
        else:
            old = tmp.with_name(tmp.name.replace(".new-", ".old-"))
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        _fsync_dir(target.parent)
    except OSError as err:
        _pending.pop(tmp, None)
        shutil.rmtree(tmp, ignore_errors=True)
        raise MixemError(
            f"--out {out}: could not write the outputs ({err.strerror or err}); "
            "the directory was left as it was"
        ) from err
    except BaseException:
        _pending.pop(tmp, None)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def abandon_pending() -> None:
    """Remove the sets being written and the locks held (before dying of a second signal:
    nothing temporary left behind)."""
    for tmp in list(_pending):
        _pending.pop(tmp, None)
        shutil.rmtree(tmp, ignore_errors=True)
    for lock_path in list(_held_locks):
        _held_locks.discard(lock_path)
        lock_path.unlink(missing_ok=True)


def _file_written(path: Path) -> None:
    """Count a file written into a pending set; honours ``MIXEM_TEST_SIGNALS_DURING_WRITE``."""
    if path.parent not in _pending:
        return
    _pending[path.parent] += 1
    spec = os.environ.get(SIGNALS_DURING_WRITE_ENV, "")
    names, _, after = spec.partition(":")
    if spec and _pending[path.parent] == int(after):
        for name in names.split(","):
            os.kill(os.getpid(), signal.Signals[name])
