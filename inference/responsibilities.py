"""The variational distribution q(z) that an E-step returns, stored compactly.

Every guide family's best member is a table of per-point weights over a few components:
a Delta guide keeps one component per point, a top-k guide k of them, the exact posterior all K.
``Responsibilities`` stores ``q(z_i = indices[i, j]) = weights[i, j]`` and offers the two
reductions every closed-form M-step needs (weighted sums over points, per-component counts),
so models never care which family produced q.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from inference import native
from inference.errors import MixemError
from inference.reductions import RowFacts, argmax_rows


class Responsibilities(NamedTuple):
    """q(z_i = c) for every point i, compact.

    Attributes:
        weights: (N, k) float, each row sums to 1 (entries may be 0).
        indices: (N, k) int64 component ids of ``weights``, or ``None`` when q is dense
            (k == K and column c of ``weights`` is component c).
        facts: what a guide family's ``e_step`` took of its table on the way to this q (its
            point fits, entropies, logsumexps, labels: ``RowFacts``), for the E-step's record
            to use rather than take again; None (the default) on any other q (an assembled,
            sliced or concatenated one).
    """

    weights: Tensor
    indices: Tensor | None
    facts: RowFacts | None = None

    @staticmethod
    def one_hot(
        labels: Tensor, dtype: torch.dtype, facts: RowFacts | None = None
    ) -> Responsibilities:
        """A Delta q at ``labels`` (N,) int64 (``facts``: see the class); its weights are one 1
        seen N times (stride 0), so a Delta q costs no memory beyond its labels."""
        one = torch.ones(1, 1, dtype=dtype, device=labels.device)
        return Responsibilities(one.expand(labels.shape[0], 1), labels[:, None], facts)

    @staticmethod
    def cat(parts: list[Responsibilities]) -> Responsibilities:
        """Concatenate chunks of the same family along the points."""
        weights = torch.cat([p.weights for p in parts])
        if parts[0].indices is None:
            return Responsibilities(weights, None)
        return Responsibilities(
            weights, torch.cat([p.indices for p in parts if p.indices is not None])
        )

    def __len__(self) -> int:  # number of points, not the tuple's length
        return self.weights.shape[0]

    def slice(self, start: int, stop: int) -> Responsibilities:
        """Rows ``start:stop``."""
        idx = None if self.indices is None else self.indices[start:stop]
        return Responsibilities(self.weights[start:stop], idx)

    def labels(self) -> Tensor:
        """(N,) int64: each point's most probable component (ties to the lowest column)."""
        if self.indices is None:  # argmax_rows: torch's argmax over a row is a scalar loop
            return argmax_rows(self.weights)[1]
        if self.indices.shape[1] == 1:  # one state per point: it is the label
            return self.indices[:, 0]
        best = self.weights.argmax(dim=1, keepdim=True)
        return self.indices.gather(1, best)[:, 0]

    def _is_one_hot(self) -> bool:
        """One kept state per point with weight exactly 1 (a Delta or sampled q)."""
        if self.indices is None or self.weights.shape[1] != 1:
            return False
        if self.weights.numel() == 0:
            return True
        low, high = torch.aminmax(self.weights)  # no (N,) comparison tensor
        return bool(low == 1) and bool(high == 1)

    def dense(self, n_components: int) -> Tensor:
        """(N, K) float: q as a full table (allocates N x K; for tests and small data)."""
        if self.indices is None:
            return self.weights
        out = self.weights.new_zeros(self.weights.shape[0], n_components)
        return out.scatter_add_(1, self.indices, self.weights)

    def counts(self, n_components: int) -> Tensor:
        """(K,) float: sum_i q(z_i = c), the expected number of points per component."""
        if self.indices is None:
            return self.weights.sum(0)
        if self._is_one_hot():  # a Delta q: counting labels needs no weights
            counts = torch.bincount(self.indices[:, 0], minlength=n_components)
            return counts.to(self.weights.dtype)
        out = self.weights.new_zeros(n_components)
        return out.index_add_(0, self.indices.reshape(-1), self.weights.reshape(-1))

    def weighted_sum(
        self, values: Tensor, n_components: int, offset: Tensor | None = None
    ) -> Tensor:
        """sum_i q(z_i = c) * (values[i] - offset) for every c.

        Args:
            values: (N, *S) per-point statistics (e.g. x, or x x^T).
            offset: (*S) subtracted from every point's values first (a reference point, so
                float32 sums of data far from the origin keep their spread); None: nothing.
        Returns:
            (K, *S).
        """
        if self._is_one_hot():  # a Delta q: sums by label, no (N, S) product with ones
            assert self.indices is not None
            flat = values.reshape(values.shape[0], -1)
            # broadcast as values - offset would, one number per column of flat
            shift = None if offset is None else offset.broadcast_to(values.shape[1:]).reshape(-1)
            sums = _label_sums(flat, self.indices[:, 0], n_components, shift)
            return sums.reshape(n_components, *values.shape[1:])
        if offset is not None:
            values = values - offset
        flat = values.reshape(values.shape[0], -1)
        if self.indices is None:
            out = self.weights.T @ flat  # one GEMM for a dense q
        else:
            out = flat.new_zeros(n_components, flat.shape[1])
            # a scatter-add per kept column: O(N k S), far cheaper than a one-hot GEMM
            for j in range(self.indices.shape[1]):
                out.index_add_(0, self.indices[:, j], flat * self.weights[:, j : j + 1])
        return out.reshape(n_components, *values.shape[1:])


def _label_sums(
    values: Tensor, labels: Tensor, n_components: int, offset: Tensor | None = None
) -> Tensor:
    """(K, S) sums of the rows of ``values`` (N, S) (minus ``offset`` (S,)) by ``labels`` (N,):
    ``index_add_``, or the same additions in C for float32 CPU rows
    (``inference.native.label_sums``)."""
    native_ok = (
        values.dtype == torch.float32
        and values.device.type == "cpu"
        and not values.requires_grad
        and (offset is None or (offset.dtype == values.dtype and not offset.requires_grad))
        and labels.dtype == torch.int64
        and labels.device.type == "cpu"
        and labels.numel() > 0
        and native.available()
    )
    if native_ok:
        low, high = torch.aminmax(labels)
        if int(low) >= 0 and int(high) < n_components:  # else index_add_ raises its error
            return native.label_sums(values.contiguous(), labels, n_components, offset)
    if offset is not None:
        values = values - offset
    out = values.new_zeros(n_components, values.shape[1])
    return out.index_add_(0, labels, values)


class Assembler:
    """Builds the q of all N points from chunks, written into one tensor as they come.

    Each chunk is copied while it is still in cache, and the chunks are not all kept to be
    concatenated at the end (``torch.cat`` holds them and the result together: twice q, which
    for a dense q is N x K).

    Args:
        n_rows: N, the number of points the chunks cover.
        recycle: a q nobody needs any more (the previous E-step's) whose tensors may be
            overwritten when their shapes fit: a fresh N x K tensor costs a page fault per 4 KiB
            on first write, about as much as computing it.
    """

    def __init__(self, n_rows: int, recycle: Responsibilities | None = None) -> None:
        self.n_rows = n_rows
        self.recycle = recycle
        self.weights: Tensor | None = None
        self.indices: Tensor | None = None

    def put(self, start: int, q: Responsibilities) -> None:
        """Rows ``start:start + len(q)`` of q are ``q``; every chunk must keep as many states
        per point as the first (k columns) and be dense or not alike."""
        if self.weights is None:
            old = self.recycle
            self.recycle = None
            self.weights = _recycled(old and old.weights, q.weights, self.n_rows)
            if q.indices is not None:
                self.indices = _recycled(old and old.indices, q.indices, self.n_rows)
        if q.weights.shape[1] != self.weights.shape[1] or (q.indices is None) != (
            self.indices is None
        ):
            raise MixemError(
                f"a guide family's q must keep the same states per point in every chunk: got "
                f"{q.weights.shape[1]} columns after {self.weights.shape[1]}"
            )
        stop = start + len(q)
        self.weights[start:stop].copy_(q.weights)
        if self.indices is not None and q.indices is not None:
            self.indices[start:stop].copy_(q.indices)

    def result(self) -> Responsibilities:
        assert self.weights is not None, "no chunk was put"
        return Responsibilities(self.weights, self.indices)


def _writable(tensor: Tensor) -> bool:
    """False for an inference-mode tensor outside inference mode (it may not be written to)."""
    return not tensor.is_inference() or torch.is_inference_mode_enabled()


def _recycled(old: Tensor | None, like: Tensor, n_rows: int) -> Tensor:
    """``old`` when it is an (n_rows, like's columns) tensor of like's dtype and device, else a
    new one."""
    shape = (n_rows, like.shape[1])
    if (
        old is not None
        and _writable(old)
        and old.shape == shape
        and old.dtype == like.dtype
        and old.device == like.device
        and old.is_contiguous()
    ):
        return old
    return like.new_empty(shape)
