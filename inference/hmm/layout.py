"""How the chain's steps are laid out for the reductions: sequences cut into chunks of L steps.

The recursions over time are loops in Python, one tensor operation per step over every chunk at
once. Sequences are cut into chunks of L steps so that the loop is L steps long instead of the
longest sequence: each chunk's K x K transfer matrix (log p(x_chunk, z_last | z_before), the
product of its steps in the (log-sum-exp or max, +) semiring) is computed for all chunks in
parallel, the chunks of a sequence are then chained by their transfer matrices (a loop over the
chunks), and each chunk's own messages are run again from its exact entry message. The
transfer matrices cost K times the work of the plain recursion, so a short L pays only when the
Python loop, not the arithmetic, dominates: ``choose_chunk`` weighs the two. L = the longest
sequence is the plain recursion (one chunk per sequence, no transfer matrices).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

STEP_SECONDS = 2e-5  # one Python-level tensor operation on small tensors
ELEMENT_SECONDS = 3e-9  # one log-sum-exp term (an exp, a log, adds)
MAX_TRANSFER_ELEMENTS = 1 << 24  # bounds the (chunks, K, K, K) tensor of one transfer step


class Layout(NamedTuple):
    """The chunks of every sequence.

    rows: (M, L) global row of each chunk's step; the padding beyond a chunk's end repeats its
        last row. valid: (M, L) True on a chunk's own steps. seq: (M,) its sequence.
    first: (M,) True for the first chunk of a sequence (chunks of a sequence are consecutive).
    grid: (S, J) index of sequence s's j-th chunk, -1 beyond its last.
    starts, lengths: (S,) first row and length of each sequence.
    """

    rows: Tensor
    valid: Tensor
    seq: Tensor
    first: Tensor
    grid: Tensor
    starts: Tensor
    lengths: Tensor

    @property
    def blocked(self) -> bool:
        """Some sequence has more than one chunk: the transfer matrices are needed."""
        return self.grid.shape[1] > 1

    @property
    def ends(self) -> Tensor:
        """(S,) last row of each sequence."""
        return self.starts + self.lengths - 1

    def last_chunks(self) -> Tensor:
        """(S,) index of each sequence's last chunk."""
        return (self.grid >= 0).sum(1) - 1 + self.grid[:, 0]


def build_layout(lengths: Tensor, chunk: int) -> Layout:
    """The layout of sequences of ``lengths`` (S,) int64 in chunks of ``chunk`` steps."""
    device = lengths.device
    starts = lengths.cumsum(0) - lengths
    n_chunks = (lengths + chunk - 1) // chunk
    S, M = lengths.shape[0], int(n_chunks.sum())
    seq = torch.repeat_interleave(torch.arange(S, device=device), n_chunks)
    offset = n_chunks.cumsum(0) - n_chunks
    j = torch.arange(M, device=device) - offset[seq]
    begin = starts[seq] + j * chunk
    size = torch.minimum(lengths[seq] - j * chunk, torch.tensor(chunk, device=device))
    steps = torch.arange(chunk, device=device)
    rows = begin[:, None] + torch.minimum(steps[None], size[:, None] - 1)
    valid = steps[None] < size[:, None]
    grid = torch.full((S, int(n_chunks.max())), -1, dtype=torch.long, device=device)
    grid[seq, j] = torch.arange(M, device=device)
    return Layout(rows, valid, seq, j == 0, grid, starts, lengths)


def choose_chunk(lengths: Tensor, K: int) -> int:
    """The chunk length L of least estimated time (see the module docstring).

    Plain recursion (L = longest): 2 L steps (forward, backward) over S L K^2 terms each.
    Chunked: L steps of transfer matrices over M L K^3 terms, 2 J steps chaining the chunks
    and 2 L steps of the chunks' own messages, M = the number of chunks, J = the most per
    sequence; a candidate whose transfer step would exceed MAX_TRANSFER_ELEMENTS is skipped.
    """
    longest = int(lengths.max())
    candidates = [longest] + [2**p for p in range(4, 40) if 2**p < longest]
    best, best_cost = longest, float("inf")
    for L in candidates:
        n_chunks = (lengths + L - 1) // L
        M, J = int(n_chunks.sum()), int(n_chunks.max())
        steps = 2 * L
        work = 2 * M * L * K * K
        if J > 1:
            if M * K**3 > MAX_TRANSFER_ELEMENTS:
                continue
            steps += L + 2 * J
            work += M * L * K**3 + 2 * J * lengths.shape[0] * K**3
        cost = steps * STEP_SECONDS + work * ELEMENT_SECONDS
        if cost < best_cost:
            best, best_cost = L, cost
    return best


def _dense(layout: Layout, n_rows: int) -> bool:
    """Every chunk is full: the (M, L) grid of rows is 0..N-1 in order (no padding)."""
    M, L = layout.rows.shape
    return n_rows == M * L and bool(layout.valid.all())


def lay_out(values: Tensor, layout: Layout) -> Tensor:
    """(N, ...) per row -> (M, L, ...) per chunk step (a view when no chunk is padded)."""
    if _dense(layout, values.shape[0]):
        return values.view(*layout.rows.shape, *values.shape[1:])
    return values[layout.rows]


def scatter_rows(values: Tensor, layout: Layout, n_rows: int) -> Tensor:
    """(M, L, ...) per chunk step -> (N, ...) per row, the padding dropped. The chunks' own
    steps, in order, are the rows 0..N-1 (``build_layout``'s order), so this is a selection."""
    if _dense(layout, n_rows):
        return values.reshape(n_rows, *values.shape[2:])
    return values[layout.valid]


def full_steps(valid: Tensor) -> list[bool]:
    """Per step: True when it is an own step of every chunk (no masking needed)."""
    return valid.all(0).tolist()


def _reduce(scores: Tensor, dim: int, kind: str) -> Tensor:
    return torch.logsumexp(scores, dim) if kind == "sum" else scores.amax(dim)


def chain_forward(transfer: Tensor, layout: Layout, kind: str) -> Tensor:
    """(M, K) message at every chunk's last step from the transfer matrices (M, K_in, K)."""
    end = torch.empty_like(transfer[:, 0])
    grid = layout.grid
    msg = transfer[grid[:, 0], 0]  # a first chunk's rows are all the same (from the start)
    end[grid[:, 0]] = msg
    for j in range(1, grid.shape[1]):
        idx = grid[:, j]
        has = idx >= 0
        new = _reduce(msg[:, :, None] + transfer[idx.clamp_min(0)], 1, kind)
        msg = torch.where(has[:, None], new, msg)
        end[idx[has]] = new[has]
    return end


def chain_backward(transfer: Tensor, layout: Layout) -> Tensor:
    """(M, K) beta at every chunk's last step: 0 for a sequence's last chunk, else the next
    chunk's transfer matrix applied to its own exit message."""
    grid = layout.grid
    S, J = grid.shape
    exit_ = torch.zeros_like(transfer[:, 0])
    ahead = transfer.new_zeros(S, transfer.shape[-1])  # the exit message of chunk j + 1
    for j in range(J - 1, -1, -1):
        current = torch.zeros_like(ahead)
        if j + 1 < J:
            nxt = grid[:, j + 1]
            via = torch.logsumexp(transfer[nxt.clamp_min(0)] + ahead[:, None, :], -1)
            current = torch.where((nxt >= 0)[:, None], via, current)
        idx = grid[:, j]
        exit_[idx[idx >= 0]] = current[idx >= 0]
        ahead = current
    return exit_
