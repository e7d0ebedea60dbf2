"""Data that is read chunk by chunk, for fits over files larger than memory.

``NpySource`` stands in for an (N, D) tensor wherever the EM loop only slices rows: each
``source[a:b]`` reads those rows from the ``.npy`` file at their byte offset (``np.fromfile``
with an offset), so the process holds one chunk at a time. Reading through ``np.memmap`` would
work too, but every page it touches stays mapped into the process and counts in its resident
memory; positioned reads keep the footprint bounded by the chunk, which is the point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from inference.data import compute_dtype
from inference.errors import MixemError


def _npy_layout(path: Path) -> tuple[int, tuple[int, ...], np.dtype, bool]:
    """(header bytes, shape, dtype, fortran_order) of a .npy file, without reading its data."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        return handle.tell(), shape, dtype, fortran


class NpySource:
    """Rows ``start:stop`` of an (N, D) ``.npy`` file, served as tensors on demand.

    Args:
        path: a C-ordered 2-D numeric ``.npy`` file.
        dtype: "float32" / "float64" for the served chunks; by default the file's float dtype,
            float64 for other numbers (``inference.data.compute_dtype``, as in memory).
        start, stop: the row range this source covers (a worker's shard); all rows by default.
        device: where the chunks are put.
    """

    def __init__(
        self,
        path: str | Path,
        dtype: str | None = None,
        start: int = 0,
        stop: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.path = Path(path)
        self.offset, shape, self.file_dtype, fortran = _npy_layout(self.path)
        if len(shape) != 2:
            raise MixemError(f"{path}: data must be a 2-D array (N x D), got shape {shape}")
        if fortran:
            raise MixemError(
                f"{path}: Fortran-ordered arrays cannot be streamed; save with C order"
            )
        try:
            self.dtype: torch.dtype = getattr(torch, compute_dtype(self.file_dtype, dtype).name)
        except MixemError as err:
            raise MixemError(f"{path}: {err}") from err
        self.total_rows, self.d = int(shape[0]), int(shape[1])
        stop = self.total_rows if stop is None else stop
        if not 0 <= start <= stop <= self.total_rows:
            raise MixemError(f"rows {start}:{stop} are outside the file's {self.total_rows} rows")
        self.start, self.stop = start, stop
        self.device = torch.device(device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.stop - self.start, self.d])

    def dim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, rows: slice) -> Tensor:
        """Rows of this source (a slice with step 1) as an (n, D) tensor read from disk."""
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("NpySource supports contiguous row slices only")
        first, last, _ = rows.indices(len(self))
        count = max(last - first, 0)
        itemsize = self.file_dtype.itemsize
        block = np.fromfile(
            self.path,
            dtype=self.file_dtype,
            count=count * self.d,
            offset=self.offset + (self.start + first) * self.d * itemsize,
        ).reshape(count, self.d)
        if not block.dtype.isnative:  # torch takes native byte order only (np.load converts too)
            block = block.astype(block.dtype.newbyteorder("="))
        return torch.from_numpy(block).to(device=self.device, dtype=self.dtype)

    def shard(self, rank: int, world_size: int) -> NpySource:
        """The contiguous block of rows that worker ``rank`` of ``world_size`` owns."""
        bounds = shard_bounds(len(self), rank, world_size)
        return NpySource(
            self.path,
            str(self.dtype).removeprefix("torch."),
            self.start + bounds[0],
            self.start + bounds[1],
            self.device,
        )


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of worker ``rank``'s rows: contiguous, sizes differing by at most one, so
    gathering shards in rank order restores the original order."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
