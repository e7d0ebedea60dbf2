"""Loading data for the CLI: ``.npy``, numeric ``.csv`` (optional header) and built-in sets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from inference.errors import MixemError

BUILTIN = ("blobs", "iris", "digits")


def make_blobs(
    n: int = 1500, centres: int = 5, d: int = 2, spread: float = 1.0, seed: int = 0
) -> np.ndarray:
    """(n, d) float64 points around ``centres`` random centres in [-10, 10]^d, unit noise."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-10, 10, size=(centres, d))
    labels = rng.integers(centres, size=n)
    return means[labels] + spread * rng.standard_normal((n, d))


def _builtin(name: str) -> np.ndarray:
    if name == "blobs":
        return make_blobs()
    if name not in BUILTIN:
        raise MixemError(f"unknown built-in data {name!r}; choose one of: {', '.join(BUILTIN)}")
    try:
        from sklearn import datasets
    except ImportError as err:  # scikit-learn ships these two data sets
        raise MixemError(f"builtin:{name} needs scikit-learn: pip install 'mixem[dev]'") from err
    return np.asarray(datasets.load_iris().data if name == "iris" else datasets.load_digits().data)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row and any(c.strip() for c in row)]
    except UnicodeDecodeError as err:
        raise MixemError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from err
    # a header names every column: a first row with any number in it is data (a typo in it
    # is then reported, not dropped as if it were a header)
    if rows and not any(_is_number(cell) for cell in rows[0]):
        rows = rows[1:]
    if not rows:
        raise MixemError(f"{path}: no data rows")
    width = len(rows[0])
    for r, row in enumerate(rows, start=1):
        if len(row) != width:
            raise MixemError(f"{path}: data row {r} has {len(row)} fields, expected {width}")
        for c, cell in enumerate(row, start=1):
            if not _is_number(cell):
                raise MixemError(
                    f"{path}: data row {r}, column {c}: {cell.strip()!r} is not a number"
                )
    return np.array([[float(cell) for cell in row] for row in rows])


def load_array(spec: str) -> np.ndarray:
    """The array named by ``spec``: ``builtin:NAME``, a ``.npy`` file or a ``.csv`` file."""
    if spec.startswith("builtin:"):
        return _builtin(spec.split(":", 1)[1])
    path = Path(spec)
    if not path.is_file():
        raise MixemError(f"data file not found: {spec}")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise MixemError(f"{spec}: not a numeric .npy file ({err})") from err
    if path.suffix == ".csv":
        return _read_csv(path)
    raise MixemError(
        f"{spec}: unsupported file type {path.suffix!r}; use .npy, .csv or builtin:NAME"
    )


def compute_dtype(stored: np.dtype, dtype: str | None = None) -> np.dtype:
    """The dtype a fit computes in: ``dtype`` ("float32" / "float64") when given, else the
    stored float32/float64, and float64 for any other numbers (as scikit-learn)."""
    if stored.kind not in "biuf":
        raise MixemError(f"data must be numeric, got dtype {stored}")
    if dtype is not None:
        if dtype not in ("float32", "float64"):
            raise MixemError(f"unknown dtype {dtype!r}; choose float32 or float64")
        return np.dtype(dtype)
    return stored if stored in (np.float32, np.float64) else np.dtype("float64")


def to_tensor(array: np.ndarray, dtype: str | None = None) -> Tensor:
    """``array`` as a tensor in ``compute_dtype(array.dtype, dtype)``."""
    target = compute_dtype(array.dtype, dtype)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=target))
