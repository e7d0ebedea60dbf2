"""The chain's messages in log space, per chunk of a ``Layout``: forward (sum or max), backward.

kind "sum" is the (log-sum-exp, +) semiring of the forward-backward algorithm, "max" the
(max, +) semiring of Viterbi. Every message is a log-probability: nothing is exponentiated
except inside ``torch.logsumexp`` (which shifts by the maximum), so a sequence of 10^6 steps
neither underflows nor loses the steps' small differences. The largest tensor of a step is
(chunks, K, K) (times K for the transfer matrices), never one per time step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from inference.hmm.layout import Layout


class Chain(NamedTuple):
    """The chain's log-potentials: ``log_start`` (K,), ``log_trans`` (K, K) (row: from),
    ``log_emit`` (N, K) = log p(x_t | z_t = k) for every row of the data."""

    log_start: Tensor
    log_trans: Tensor
    log_emit: Tensor

    def scaled(self, factor: float) -> Chain:
        """The chain with every log-potential times ``factor`` (tempering: 1 / T)."""
        return Chain(self.log_start * factor, self.log_trans * factor, self.log_emit * factor)


def combine(prev: Tensor, log_trans: Tensor, kind: str) -> tuple[Tensor, Tensor | None]:
    """Message into the next step: reduce_i prev[..., i] + log_trans[i, k], and for "max" the
    argmax i. prev: (..., K) -> ((..., K), (..., K) int64 or None)."""
    scores = prev.unsqueeze(-1) + log_trans  # (..., K_from, K_to)
    if kind == "sum":
        return torch.logsumexp(scores, -2), None
    best, arg = scores.max(-2)
    return best, arg


def run_forward(
    entry: Tensor, log_trans: Tensor, emit: Tensor, valid: Tensor, kind: str, keep: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Forward messages through every chunk at once.

    Args:
        entry: (M, *R, K) message at each chunk's first step, its emission included; R is ()
            for the chunks' own messages, (K,) for the transfer matrices (one row per state
            before the chunk).
        emit: (M, L, K) the chunks' log-emissions; valid: (M, L) their own steps.
        keep: return every step's message (M, L, K) and, for "max", the argmax (M, L, K).
    Returns (the message at each chunk's last own step (M, *R, K), messages, argmaxes); a
    padded step carries the message on unchanged.
    """
    M, L, K = emit.shape
    extra = entry.dim() - 2
    messages = emit.new_empty(M, L, K) if keep else None
    pointers = torch.zeros(M, L, K, dtype=torch.long) if keep and kind == "max" else None
    msg = entry
    if messages is not None:
        messages[:, 0] = msg
    for step in range(1, L):
        new, arg = combine(msg, log_trans, kind)
        e = emit[:, step].reshape(M, *([1] * extra), K)
        own = valid[:, step].reshape(M, *([1] * (extra + 1)))
        msg = torch.where(own, new + e, msg)
        if messages is not None:
            messages[:, step] = msg
        if pointers is not None and arg is not None:
            pointers[:, step] = arg
    return msg, messages, pointers


def run_backward(exit_: Tensor, log_trans: Tensor, emit: Tensor, valid: Tensor) -> Tensor:
    """Backward messages beta_t[k] = log p(x after t in the sequence | z_t = k), per chunk.

    Args:
        exit_: (M, K) beta at each chunk's last own step. emit, valid: as ``run_forward``.
    Returns (M, L, K); a padded step holds the exit message.
    """
    M, L, K = emit.shape
    betas = emit.new_empty(M, L, K)
    msg = exit_
    betas[:, L - 1] = msg
    for step in range(L - 2, -1, -1):
        ahead = emit[:, step + 1] + msg  # (M, K)
        new = torch.logsumexp(log_trans + ahead[:, None, :], -1)
        msg = torch.where(valid[:, step + 1, None], new, msg)
        betas[:, step] = msg
    return betas


class Boundaries(NamedTuple):
    """What the chunks need from their neighbours.

    entry: (M, K) message at each chunk's first step (emission included).
    entry_arg: (M, K) for "max": the best state at the previous chunk's last step (0 for a
        first chunk). exit: (M, K) for "sum": beta at each chunk's last step.
    end: (M, K) message at each chunk's last step, or None when every sequence is one chunk.
    """

    entry: Tensor
    entry_arg: Tensor
    exit: Tensor
    end: Tensor | None


def boundaries(chain: Chain, layout: Layout, emit: Tensor, kind: str) -> Boundaries:
    """Entry (and exit) messages of every chunk, through the chunks' transfer matrices.

    Args:
        emit: (M, L, K) ``chain.log_emit`` laid out by ``layout``.
    """
    e0 = emit[:, 0]
    M, K = e0.shape
    zeros = torch.zeros(M, K, dtype=torch.long, device=e0.device)
    if not layout.blocked:
        return Boundaries(chain.log_start + e0, zeros, torch.zeros_like(e0), None)
    first = layout.first[:, None, None]
    into = torch.where(first, chain.log_start.expand(K, K), chain.log_trans)  # (M, K_in, K)
    transfer, _, _ = run_forward(into + e0[:, None, :], chain.log_trans, emit, layout.valid,
                                 kind, keep=False)  # fmt: skip
    end = _chain_forward(transfer, layout, kind)
    previous = (torch.arange(M, device=e0.device) - 1).clamp_min(0)
    via, arg = combine(end[previous], chain.log_trans, kind)
    f = layout.first[:, None]
    entry = torch.where(f, chain.log_start + e0, via + e0)
    entry_arg = zeros if arg is None else torch.where(f, 0, arg)
    exit_ = _chain_backward(transfer, layout) if kind == "sum" else torch.zeros_like(e0)
    return Boundaries(entry, entry_arg, exit_, end)


def _reduce(scores: Tensor, dim: int, kind: str) -> Tensor:
    return torch.logsumexp(scores, dim) if kind == "sum" else scores.amax(dim)


def _chain_forward(transfer: Tensor, layout: Layout, kind: str) -> Tensor:
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


def _chain_backward(transfer: Tensor, layout: Layout) -> Tensor:
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
