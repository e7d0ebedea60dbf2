"""The chain's messages, per chunk of a ``Layout``: forward (sum or max), backward.

kind "sum" is the (log-sum-exp, +) semiring of forward-backward, "max" the (max, +) semiring of
Viterbi. Every message handed out is a log-probability, so 10^6 steps neither underflow nor lose
the steps' small differences. A step's largest tensor is (chunks, K, K) (times K for the
transfer matrices), never one per time step.

Max messages stay in log space. Sum messages are computed scaled (Rabiner's scaled
forward-backward: one K x K product a step, not K^2 exponentials): a message is log(hat) +
log_scale, the emissions exponentiated once, shifted by each step's maximum, hat renormalised
every ``RENORM`` steps and the normalisers' logs summed into log_scale. Every factor is <= 1
(shifted emissions, transition and start probabilities, tempered too), so a term lost to
underflow is below ``tiny`` where its sum is about 1; the scaled result is kept only when every
normaliser stays above ``_floor`` (such terms are then below the rounding of every sum they
enter), otherwise the exact log-space recursion (``torch.logsumexp``) runs instead.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from inference.hmm.layout import Layout, chain_backward, chain_forward, full_steps

RENORM = 8  # steps between two normalisations of a scaled message


class Chain(NamedTuple):
    """The chain's log-potentials: ``log_start`` (K,), ``log_trans`` (K, K) (row: from),
    ``log_emit`` (N, K) = log p(x_t | z_t = k) for every row of the data."""

    log_start: Tensor
    log_trans: Tensor
    log_emit: Tensor

    def scaled(self, factor: float) -> Chain:
        """The chain with every log-potential times ``factor`` (tempering: 1 / T)."""
        return Chain(self.log_start * factor, self.log_trans * factor, self.log_emit * factor)


class Scaled(NamedTuple):
    """Sum messages log(hat) + log_scale. hat: (M, L, K) per step (None: not kept); log_scale:
    (M, L, 1); last: (M, *R, K) the log message at each chunk's last own step."""

    hat: Tensor | None
    log_scale: Tensor | None
    last: Tensor


def combine(
    prev: Tensor, log_trans: Tensor, kind: str, to_from: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Message into the next step: reduce_i prev[..., i] + log_trans[i, k], and for "max" the
    argmax i (the lowest on ties). prev: (..., K) -> ((..., K), (..., K) int64 or None).
    ``to_from``: log_trans.T made contiguous once, for a contiguous max (computed if None)."""
    if kind == "sum":
        return torch.logsumexp(prev.unsqueeze(-1) + log_trans, -2), None
    to_from = log_trans.T if to_from is None else to_from
    best, arg = (prev.unsqueeze(-2) + to_from).max(-1)  # (..., K_to, K_from)
    return best, arg


def _floor(dtype: torch.dtype, K: int) -> float:
    """The least normaliser of RENORM scaled steps for which underflow loses nothing."""
    return float(K ** (RENORM + 2) * torch.finfo(dtype).tiny / torch.finfo(dtype).eps)


def _shifted(emit: Tensor) -> tuple[Tensor, Tensor]:
    """exp(emit - top) and top (M, L, 1), each step's largest log-emission (0 if all -inf)."""
    top = emit.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    return (emit - top).exp(), top


def _normalise(msg: Tensor) -> tuple[Tensor, Tensor]:
    norm = msg.sum(-1, keepdim=True)
    return msg / norm, norm


def scaled_forward(
    entry: Tensor, log_trans: Tensor, emit: Tensor, valid: Tensor, keep: bool
) -> Scaled | None:
    """The sum kind of ``run_forward`` scaled; None when a normaliser falls below ``_floor``."""
    M, L, K = emit.shape
    rest = tuple(entry.shape[1:-1])  # R
    ones = [1] * len(rest)
    weights, top = _shifted(emit)
    weights = weights.reshape(M, L, *ones, K)
    own = valid.reshape(M, L, *ones, 1)
    trans, full = log_trans.exp(), full_steps(valid)
    first = entry.amax(-1, keepdim=True)
    first = torch.where(torch.isfinite(first), first, 0.0)
    msg = (entry - first).exp()
    hat = emit.new_empty(M, L, K) if keep else None
    marks = [s for s in range(1, L) if s % RENORM == 0 or s == L - 1]
    norms = emit.new_ones(M, len(marks), *rest, 1)
    if hat is not None:
        hat[:, 0] = msg
    mark = 0
    for step in range(1, L):
        new = (msg @ trans).mul_(weights[:, step])
        msg = new if full[step] else torch.where(own[:, step], new, msg)
        if step % RENORM == 0 or step == L - 1:
            msg, norms[:, mark] = _normalise(msg)
            mark += 1
        if hat is not None:
            hat[:, step] = msg
    if not bool((norms >= _floor(emit.dtype, K)).all()):
        return None
    steps = top * valid[..., None]  # (M, L, 1): the shifts of the emissions multiplied in
    steps[:, 0] = 0.0  # the entry's emission is in ``first``
    total = first + norms.log().sum(1) + steps.sum(1).reshape(M, *ones, 1)
    scale = None
    if keep:
        logs = torch.zeros_like(steps)
        logs[:, marks] = norms.log()
        scale = first.unsqueeze(1) + (logs + steps).cumsum(1)
    return Scaled(hat, scale, msg.log() + total)


def scaled_backward(exit_: Tensor, log_trans: Tensor, emit: Tensor, valid: Tensor) -> Scaled | None:
    """The backward messages of ``run_backward`` scaled (hat, log_scale per step; ``last`` is
    the first step's); None when a normaliser falls below ``_floor``."""
    M, L, K = emit.shape
    weights, top = _shifted(emit)
    back, full = log_trans.exp().T.contiguous(), full_steps(valid)
    first = exit_.amax(-1, keepdim=True)
    first = torch.where(torch.isfinite(first), first, 0.0)
    msg = (exit_ - first).exp()
    hat = emit.new_empty(M, L, K)
    hat[:, L - 1] = msg
    marks = [s for s in range(L - 2, -1, -1) if (L - 1 - s) % RENORM == 0 or s == 0]
    norms = emit.new_ones(M, len(marks), 1)
    mark = 0
    for step in range(L - 2, -1, -1):
        new = (weights[:, step + 1] * msg) @ back
        msg = new if full[step + 1] else torch.where(valid[:, step + 1, None], new, msg)
        if (L - 1 - step) % RENORM == 0 or step == 0:
            msg, norms[:, mark] = _normalise(msg)
            mark += 1
        hat[:, step] = msg
    if not bool((norms >= _floor(emit.dtype, K)).all()):
        return None
    logs = torch.zeros(M, L, 1, dtype=emit.dtype, device=emit.device)
    logs[:, marks] = norms.log()
    steps = torch.zeros_like(logs)  # the shift of step t + 1's emission enters step t
    steps[:, :-1] = (top * valid[..., None])[:, 1:]
    scale = first.unsqueeze(1) + (logs + steps).flip(1).cumsum(1).flip(1)
    return Scaled(hat, scale, msg.log() + scale[:, 0])


def run_forward(
    entry: Tensor, log_trans: Tensor, emit: Tensor, valid: Tensor, kind: str, keep: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Forward messages through every chunk at once.

    Args:
        entry: (M, *R, K) message at each chunk's first step, its emission included; R is ()
            for the chunks' own messages, (K,) for the transfer matrices (one row per state
            before the chunk).
        emit: (M, L, K) the chunks' log-emissions; valid: (M, L) their own steps.
        keep: "sum": return every step's message (M, L, K); "max": every step's argmax
            (M, L, K), a padded step's the identity (step 0's is left for the caller).
    Returns (the message at each chunk's last own step (M, *R, K), messages, argmaxes); a
    padded step carries the message on unchanged.
    """
    if kind == "sum":
        found = scaled_forward(entry, log_trans, emit, valid, keep)
        if found is not None:
            hat, scale = found.hat, found.log_scale
            return found.last, None if hat is None or scale is None else hat.log() + scale, None
    M, L, K = emit.shape
    ones = [1] * (entry.dim() - 2)
    e_steps, own = emit.reshape(M, L, *ones, K), valid.reshape(M, L, *ones, 1)
    messages = emit.new_empty(M, L, K) if keep and kind == "sum" else None
    pointers = emit.new_zeros(M, L, K, dtype=torch.long) if keep and kind == "max" else None
    same = torch.arange(K, device=emit.device)
    full, to_from = full_steps(valid), log_trans.T.contiguous()
    msg = entry
    if messages is not None:
        messages[:, 0] = msg
    for step in range(1, L):
        new, arg = combine(msg, log_trans, kind, to_from)
        new += e_steps[:, step]
        msg = new if full[step] else torch.where(own[:, step], new, msg)
        if messages is not None:
            messages[:, step] = msg
        if pointers is not None and arg is not None:
            pointers[:, step] = arg if full[step] else torch.where(own[:, step], arg, same)
    return msg, messages, pointers


def run_backward(exit_: Tensor, log_trans: Tensor, emit: Tensor, valid: Tensor) -> Tensor:
    """Backward messages beta_t[k] = log p(x after t in the sequence | z_t = k), per chunk.

    Args:
        exit_: (M, K) beta at each chunk's last own step. emit, valid: as ``run_forward``.
    Returns (M, L, K); a padded step holds the exit message.
    """
    found = scaled_backward(exit_, log_trans, emit, valid)
    if found is not None:
        assert found.hat is not None and found.log_scale is not None
        return found.hat.log() + found.log_scale
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
    """What the chunks need from their neighbours: entry (M, K) the message at each chunk's
    first step (emission included); entry_arg (M, K) for "max": the best state at the previous
    chunk's last step (0 for a first chunk); exit (M, K) for "sum": beta at each chunk's last
    step; end (M, K) the message at each chunk's last step, None if no sequence is chunked."""

    entry: Tensor
    entry_arg: Tensor
    exit: Tensor
    end: Tensor | None


def boundaries(chain: Chain, layout: Layout, emit: Tensor, kind: str) -> Boundaries:
    """Entry (and exit) messages of every chunk, through the chunks' transfer matrices;
    emit: (M, L, K) ``chain.log_emit`` laid out by ``layout``."""
    e0 = emit[:, 0]
    M, K = e0.shape
    zeros = torch.zeros(M, K, dtype=torch.long, device=e0.device)
    if not layout.blocked:
        return Boundaries(chain.log_start + e0, zeros, torch.zeros_like(e0), None)
    first = layout.first[:, None, None]
    into = torch.where(first, chain.log_start.expand(K, K), chain.log_trans)  # (M, K_in, K)
    transfer, _, _ = run_forward(into + e0[:, None, :], chain.log_trans, emit, layout.valid,
                                 kind, keep=False)  # fmt: skip
    end = chain_forward(transfer, layout, kind)
    previous = (torch.arange(M, device=e0.device) - 1).clamp_min(0)
    via, arg = combine(end[previous], chain.log_trans, kind)
    f = layout.first[:, None]
    entry = torch.where(f, chain.log_start + e0, via + e0)
    entry_arg = zeros if arg is None else torch.where(f, 0, arg)
    exit_ = chain_backward(transfer, layout) if kind == "sum" else torch.zeros_like(e0)
    return Boundaries(entry, entry_arg, exit_, end)
