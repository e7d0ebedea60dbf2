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
        # nccl reduces CUDA tensors only, gloo CPU ones; callers may pass either
        nccl = dist.get_backend() == "nccl"
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        )

    def sum(self, value: Tensor) -> Tensor:
        out = value.to(self.device, copy=True)
        self._dist.all_reduce(out)
        return out.to(value.device)

    def gather(self, value: Tensor) -> Tensor:
        # shards may differ in length: exchange lengths, pad to the longest, trim after
        device = self.device
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world_size)]
        self._dist.all_gather(sizes, torch.tensor([value.shape[0]], device=device))
        longest = int(max(int(s) for s in sizes))
        padded = value.new_zeros(longest, *value.shape[1:], device=device)
        padded[: value.shape[0]] = value.to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._dist.all_gather(parts, padded)
        gathered = torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)])
        return gathered.to(value.device)
