"""Reused memory for the E-step's per-chunk tables, so steady-state chunks allocate nothing big.

A fresh (n, K) tensor per chunk is not free: the allocator hands large blocks back to the
kernel when they are freed, and the next chunk page-faults its table in again (measured at about
3 ns per float32 entry on a 2-core VM, 4x the GEMM that fills it). Inside ``reusing()`` the
tables and temporaries of a chunk come from buffers kept across chunks instead:

* ``output(slot, shape, like)``: memory that outlives the call (a site's log-density table);
  the k-th request of a slot within a chunk gets the k-th buffer, so two sites never share one,
  and ``next_chunk()`` hands the same buffers to the next chunk, overwriting them;
* ``temporary(slot, shape, like)``: scratch that the caller drops before returning.

Outside ``reusing()`` both return fresh tensors: nothing changes for code that keeps its tables.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor


class _Workspace:
    def __init__(self) -> None:
        self.buffers: dict[tuple[str, int, torch.dtype, torch.device], Tensor] = {}
        self.counts: dict[str, int] = {}

    def get(self, key: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A (shape) view of a flat buffer for ``key``, grown when too small, never shrunk."""
        numel = 1
        for size in shape:
            numel *= size
        index = (key, 0, like.dtype, like.device)
        flat = self.buffers.get(index)
        if flat is None or flat.numel() < numel:
            flat = torch.empty(numel, dtype=like.dtype, device=like.device)
            self.buffers[index] = flat
        return flat[:numel].view(shape)


class _Stack(threading.local):
    """Active workspaces, innermost last; one stack per thread, so threads never share one;
    and the places offered by ``placing``."""

    def __init__(self) -> None:
        self.spaces: list[_Workspace] = []
        self.places: dict[str, Tensor] = {}


_stack = _Stack()


@contextlib.contextmanager
def reusing() -> Iterator[None]:
    """Within the block, ``output`` and ``temporary`` hand out reused buffers."""
    space = _Workspace()
    _stack.spaces.append(space)
    try:
        yield
    finally:
        _stack.spaces.remove(space)  # by identity: a generator closed late must not pop another


def next_chunk() -> None:
    """The previous chunk's outputs may now be overwritten."""
    if _stack.spaces:
        _stack.spaces[-1].counts.clear()


def output(slot: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``shape`` in ``like``'s dtype and device, valid for this chunk."""
    if not _stack.spaces:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    space = _stack.spaces[-1]
    k = space.counts.get(slot, 0)
    space.counts[slot] = k + 1
    return space.get(f"{slot}#{k}", shape, like)


def temporary(slot: str, like: Tensor) -> Tensor:
    """Uninitialised scratch shaped and laid out as ``like`` (a 2-D tensor, or its transpose:
    elementwise kernels are fast only when every operand walks memory in the same order); the
    same memory at every call of ``slot``."""
    if not _stack.spaces:
        return torch.empty_like(like)
    flipped = like.dim() == 2 and not like.is_contiguous() and like.T.is_contiguous()
    shape = tuple(like.shape[::-1]) if flipped else tuple(like.shape)
    out = _stack.spaces[-1].get(f"tmp:{slot}", shape, like)
    return out.T if flipped else out


def is_reused(tensor: Tensor) -> bool:
    """True when ``tensor`` lies in an output buffer of the active workspace (safe to overwrite
    in place for the rest of the chunk: nobody else holds it)."""
    if not _stack.spaces:
        return False
    pointer = tensor.untyped_storage().data_ptr()
    return any(
        flat.untyped_storage().data_ptr() == pointer
        for (key, *_), flat in _stack.spaces[-1].buffers.items()
        if not key.startswith("tmp:")
    )


@contextlib.contextmanager
def placing(slot: str, target: Tensor) -> Iterator[None]:
    """Within the block, ``placed(slot, ...)`` hands out ``target`` (once): the final home of a
    result (e.g. the rows of the E-step's q that a chunk's softmax fills), so that the result
    is written there directly instead of being copied there afterwards."""
    _stack.places[slot] = target
    try:
        yield
    finally:
        _stack.places.pop(slot, None)


def placed(slot: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The target offered by ``placing(slot, ...)`` when it is a contiguous tensor of ``shape``
    in ``like``'s dtype and device (it is then taken: a second request gets a new tensor), else
    a new uninitialised tensor."""
    target = _stack.places.get(slot)
    if (
        target is not None
        and tuple(target.shape) == shape
        and target.dtype == like.dtype
        and target.device == like.device
        and target.is_contiguous()
    ):
        del _stack.places[slot]
        return target
    return torch.empty(shape, dtype=like.dtype, device=like.device)
