"""Compile a C source at first use and load it with ctypes, through a private per-user cache.

The cache directory is ``MIXEM_CACHE_DIR``, else ``$XDG_CACHE_HOME/mixem``, else
``~/.cache/mixem``, created with mode 0700. A library is named by a hash of the source text, the
compiler's path and ``--version``, the flags and the CPU's feature list, so a change of any of
them builds a new one. On a shared machine a library someone else could have written is never
loaded: the directory and the ``.so`` must be owned by the current user and writable by no one
else (and not be symbolic links); when they are not, the library is built into a fresh private
temporary directory instead (mode 0700, removed once the library is loaded). A build writes into
a temporary file beside its target and renames it into place, so concurrent first uses never see
half a file. A source's ``#include "NAME"`` lines are pasted in (``source_text``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

BASE_FLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math")


def native_flags() -> list[str]:
    """``BASE_FLAGS`` and, on x86-64, ``-march=native`` (the CPU flags are in the cache key)."""
    extra = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
    return [*BASE_FLAGS, *extra]


def cache_dir() -> Path:
    """The per-user cache directory (not created here)."""
    if os.environ.get("MIXEM_CACHE_DIR"):
        return Path(os.environ["MIXEM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mixem"


def compiler() -> str | None:
    """The C compiler (``$CC``, else ``cc``, else ``gcc``), or None."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


@functools.lru_cache(maxsize=8)
def _compiler_version(cc: str) -> str:
    try:
        done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout


def _cpu_flags() -> str:
    """The CPU's feature list (x86 ``flags`` / arm ``Features``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def is_private(path: Path, directory: bool) -> bool:
    """True when ``path`` is a directory (or a regular file), not a symbolic link, owned by the
    current user and not writable by group or others."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    kind = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    return kind and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _private_cache() -> Path | None:
    """The cache directory, created 0700 if missing; None when it is not private."""
    root = cache_dir()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return root if is_private(root, directory=True) else None


def source_text(source: Path) -> str:
    """``source`` with each ``#include "NAME"`` line replaced by the text of NAME (relative to
    the source's directory): the build compiles one file in a temporary directory, and the
    cache key then covers the shared header as well."""
    lines = []
    for line in source.read_text().splitlines(keepends=True):
        found = re.fullmatch(r'\s*#include "([^"]+)"\s*', line)
        lines.append((source.parent / found.group(1)).read_text() if found else line)
    return "".join(lines)


def cache_key(code: str, cc: str, flags: Sequence[str]) -> str:
    """The hash naming a library built from ``code`` by ``cc`` with ``flags``."""
    parts = [code, cc, _compiler_version(cc), *flags, _cpu_flags()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _compile(
    cc: str, code: str, name: str, flags: Sequence[str], libs: Sequence[str], target: Path
):
    """Build ``code`` into ``target`` (atomically, by a rename in its directory)."""
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as work:
        source = Path(work) / f"{name}.c"
        source.write_text(code)
        built = Path(work) / f"{name}.so"
        subprocess.run(
            [cc, *flags, str(source), "-o", str(built), *libs],
            check=True,
            capture_output=True,
            timeout=300,
        )
        os.chmod(built, 0o700)
        os.replace(built, target)


def build(
    source: Path, name: str, flags: Sequence[str], libs: Sequence[str] = ("-lm",)
) -> tuple[Path, Path | None]:
    """Build (or find in the cache) the library of ``source``; returns its path and, when it was
    built in a fresh temporary directory (the cache is not private), that directory (remove it
    once the library is loaded). Raises OSError / subprocess.SubprocessError on failure."""
    cc = compiler()
    if cc is None:
        raise OSError("no C compiler (set CC)")
    code = source_text(source)
    filename = f"{name}-{cache_key(code, cc, flags)}.so"
    root = _private_cache()
    if root is not None:
        target = root / filename
        if is_private(target, directory=False):
            return target, None
        if not os.path.lexists(target):
            _compile(cc, code, name, flags, libs, target)
            if is_private(target, directory=False):
                return target, None
    fresh = Path(tempfile.mkdtemp(prefix="mixem-build-"))  # 0700, ours
    _compile(cc, code, name, flags, libs, fresh / filename)
    return fresh / filename, fresh


def load(source: Path, name: str, flags: Sequence[str], symbols: Sequence[str] = ()) -> ctypes.CDLL:
    """``build`` and load the library, checking that it exports ``symbols``. Raises OSError /
    subprocess.SubprocessError when it cannot be built or lacks a symbol."""
    path, temporary = build(source, name, flags)
    try:
        lib = ctypes.CDLL(str(path))
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    missing = [symbol for symbol in symbols if not hasattr(lib, symbol)]
    if missing:
        raise OSError(f"{path.name} lacks {', '.join(missing)}")
    return lib
