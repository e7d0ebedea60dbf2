"""Sums over all the data when the data is split across processes.

EM for a mixture needs only sums over points: the ELBO, the log evidence, the number of changed
labels and the model's sufficient statistics. The loop asks a ``Reducer`` for those sums; the
local one returns its argument, the torch.distributed one all-reduces it (gloo on CPU, nccl on
GPU), so every worker sees the same totals and takes the same M-step.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class Reducer(Protocol):
    """Combines per-worker values into totals that every worker sees."""

    rank: int
    world_size: int

    def sum(self, value: Tensor) -> Tensor:
        """Element-wise sum of ``value`` over workers (same shape on every worker)."""
        ...

    def gather(self, value: Tensor) -> Tensor:
        """Concatenate every worker's ``value`` (n_w, *S) along dim 0, in rank order."""
        ...


class LocalReducer:
    """One process: sums and gathers are the identity."""

    rank = 0
    world_size = 1

    def sum(self, value: Tensor) -> Tensor:
        return value

    def gather(self, value: Tensor) -> Tensor:
        return value


LOCAL = LocalReducer()


class TorchDistributedReducer:
    """All-reduce / all-gather over the default torch.distributed process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised; launch with torchrun")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def sum(self, value: Tensor) -> Tensor:
        out = value.clone()
        self._dist.all_reduce(out)
        return out

    def gather(self, value: Tensor) -> Tensor:
        # shards may differ in length: exchange lengths, pad to the longest, trim after
        sizes = [
            torch.zeros(1, dtype=torch.int64, device=value.device) for _ in range(self.world_size)
        ]
        self._dist.all_gather(sizes, torch.tensor([value.shape[0]], device=value.device))
        longest = int(max(int(s) for s in sizes))
        padded = value.new_zeros(longest, *value.shape[1:])
        padded[: value.shape[0]] = value
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._dist.all_gather(parts, padded)
        return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)])


def total(reducer: Reducer, value: float, like: Tensor) -> float:
    """A Python float summed over workers, carried in ``like``'s dtype and device."""
    return float(reducer.sum(torch.tensor([value], dtype=like.dtype, device=like.device))[0])
