"""The chain's exact reductions: forward-backward (sum-product), Viterbi (max-product), forward
filtering backward sampling, and the log-joint of a given path.

Rows are the data's rows (N, the sequences one after another); ``Layout`` says which rows make
a sequence. Every result is computed in log space from a ``Chain``'s log-potentials; the only
(N, K, K)-shaped quantities (the pairwise posteriors, the sampling's per-row conditionals) are
formed a block of rows at a time and summed or reduced at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from inference.hmm.layout import Layout, lay_out, scatter_rows
from inference.hmm.messages import (
    Chain,
    boundaries,
    run_backward,
    run_forward,
    scaled_backward,
    scaled_forward,
)

PAIR_BLOCK = 1 << 20  # entries of one block's (rows, K, K) tensor


class Posterior(NamedTuple):
    """The exact posterior over paths, summarised.

    log_evidence: (S,) log p(x_s) per sequence. marginals: (N, K) p(z_t = k | x).
    pairs: (K, K) sum over t of p(z_{t-1} = i, z_t = j | x). start: (K,) sum over the
    sequences of p(z_0 = k | x).
    """

    log_evidence: Tensor
    marginals: Tensor
    pairs: Tensor
    start: Tensor


def row_sequence(layout: Layout) -> Tensor:
    """(N,) the sequence of every row."""
    S = layout.lengths.shape[0]
    return torch.repeat_interleave(torch.arange(S, device=layout.lengths.device), layout.lengths)


def _scatter(values: Tensor, layout: Layout, n_rows: int) -> Tensor:
    """(M, L, ...) per chunk step -> (N, ...) per row (the padding dropped)."""
    return scatter_rows(values, layout, n_rows)


def forward_messages(chain: Chain, layout: Layout) -> Tensor:
    """(N, K) alpha_t[k] = log p(x_0..x_t, z_t = k) within each sequence."""
    emit = lay_out(chain.log_emit, layout)
    b = boundaries(chain, layout, emit, "sum")
    _, alpha, _ = run_forward(b.entry, chain.log_trans, emit, layout.valid, "sum", keep=True)
    assert alpha is not None
    return _scatter(alpha, layout, chain.log_emit.shape[0])


def log_evidence(chain: Chain, layout: Layout) -> Tensor:
    """(S,) log p(x_s) per sequence, by the forward messages alone."""
    emit = lay_out(chain.log_emit, layout)
    b = boundaries(chain, layout, emit, "sum")
    if b.end is not None:
        return torch.logsumexp(b.end[layout.last_chunks()], -1)
    last, _, _ = run_forward(b.entry, chain.log_trans, emit, layout.valid, "sum", keep=False)
    return torch.logsumexp(last, -1)  # one chunk per sequence, in order


def forward_backward(chain: Chain, layout: Layout) -> Posterior:
    """The posterior marginals, pairwise sums and log evidence (sum-product)."""
    N = chain.log_emit.shape[0]
    emit = lay_out(chain.log_emit, layout)
    b = boundaries(chain, layout, emit, "sum")
    found = _scaled_posterior(chain, layout, emit, b.entry, b.exit)
    if found is not None:
        return found
    _, alpha, _ = run_forward(b.entry, chain.log_trans, emit, layout.valid, "sum", keep=True)
    assert alpha is not None
    beta = _scatter(run_backward(b.exit, chain.log_trans, emit, layout.valid), layout, N)
    alpha = _scatter(alpha, layout, N)
    log_z = torch.logsumexp(alpha[layout.ends], -1)
    seq = row_sequence(layout)
    marginals = (alpha + beta - log_z[seq, None]).exp()
    pairs = _pair_sums(alpha, chain.log_emit + beta, chain.log_trans, log_z, layout, seq)
    return Posterior(log_z, marginals, pairs, marginals[layout.starts].sum(0))


def _scaled_posterior(
    chain: Chain, layout: Layout, emit: Tensor, entry: Tensor, exit_: Tensor
) -> Posterior | None:
    """``forward_backward`` from the scaled messages: each row's marginals and pairs are
    normalised products of hats, so no scale is needed but the log evidence's; None when a
    recursion (or a product here) falls below the floor of exactness (``messages``)."""
    N, K = chain.log_emit.shape
    fwd = scaled_forward(entry, chain.log_trans, emit, layout.valid, keep=True)
    bwd = scaled_backward(exit_, chain.log_trans, emit, layout.valid) if fwd else None
    if fwd is None or bwd is None or fwd.hat is None or fwd.log_scale is None or bwd.hat is None:
        return None
    alpha, beta = _scatter(fwd.hat, layout, N), _scatter(bwd.hat, layout, N)
    ends = layout.ends
    log_z = alpha[ends].sum(-1, keepdim=True).log() + _scatter(fwd.log_scale, layout, N)[ends]
    product = alpha * beta
    norm = product.sum(-1, keepdim=True)
    trans = chain.log_trans.exp()
    top = chain.log_emit.amax(-1, keepdim=True)
    ahead = (chain.log_emit[1:] - torch.where(torch.isfinite(top[1:]), top[1:], 0.0)).exp()
    ahead *= beta[1:]  # row t: exp(log_emit_t - top_t) beta_hat_t, for the pair (t - 1, t)
    pair_norm = ((alpha[:-1] @ trans) * ahead).sum(-1, keepdim=True)
    floor = torch.finfo(norm.dtype).tiny / torch.finfo(norm.dtype).eps * K * K
    inner = torch.ones(N - 1, 1, dtype=torch.bool, device=norm.device)
    inner[layout.starts[1:] - 1] = False  # the pair (end of a sequence, start of the next)
    low = (norm < floor).any() | ((pair_norm < floor) & inner).any()
    if bool(low | ~torch.isfinite(log_z).all()):
        return None
    marginals = product / norm
    ahead *= torch.where(inner, 1.0 / pair_norm, 0.0)
    pairs = trans * (alpha[:-1].T @ ahead)
    return Posterior(log_z[:, 0], marginals, pairs, marginals[layout.starts].sum(0))


def _inner_rows(layout: Layout, n_rows: int) -> Tensor:
    """(N - S,) the rows that have a predecessor in their sequence."""
    inner = torch.ones(n_rows, dtype=torch.bool, device=layout.starts.device)
    inner[layout.starts] = False
    return inner.nonzero()[:, 0]


def _pair_sums(
    alpha: Tensor, ahead: Tensor, log_trans: Tensor, log_z: Tensor, layout: Layout, seq: Tensor
) -> Tensor:
    """sum over rows t with a predecessor of exp(alpha_{t-1}[i] + A[i, j] + ahead_t[j] - log Z).

    alpha, ahead: (N, K) (ahead = log-emission + beta); log_z: (S,); seq: (N,) row -> sequence.
    """
    K = log_trans.shape[0]
    rows = _inner_rows(layout, alpha.shape[0])
    total = log_trans.new_zeros(K, K)
    block = max(1, PAIR_BLOCK // (K * K))
    for lo in range(0, rows.shape[0], block):
        r = rows[lo : lo + block]
        scores = alpha[r - 1, :, None] + log_trans + ahead[r, None, :]
        total += (scores - log_z[seq[r], None, None]).exp().sum(0)
    return total


def viterbi(chain: Chain, layout: Layout) -> tuple[Tensor, Tensor]:
    """The most probable path (N,) int64 and its log-joint per sequence (S,) (max-product).

    Ties go to the lowest state, as numpy's argmax (hmmlearn) breaks them."""
    N = chain.log_emit.shape[0]
    emit = lay_out(chain.log_emit, layout)
    b = boundaries(chain, layout, emit, "max")
    last, _, ptrs = run_forward(b.entry, chain.log_trans, emit, layout.valid, "max", keep=True)
    assert ptrs is not None
    ptrs[:, 0] = b.entry_arg
    best, final = last[layout.last_chunks()].max(-1)
    return backtrack(_scatter(ptrs, layout, N), final, layout), best


def sample_path(chain: Chain, layout: Layout, generator: torch.Generator) -> Tensor:
    """A path (N,) drawn from the exact posterior (forward filtering, backward sampling).

    Backward sampling draws z_{t-1} from p(z_{t-1} | z_t, x_0..x_{t-1}) proportional to
    exp(alpha_{t-1} + A[:, z_t]); drawing it for every possible z_t at once (a (N, K) table of
    "random back-pointers") gives the same law and lets ``backtrack`` follow them in parallel.
    The uniforms are float64, drawn on the CPU from ``generator``: one per row and state, then
    one per sequence for its last state.
    """
    alpha = forward_messages(chain, layout)
    N, K = alpha.shape
    uniforms = torch.rand(N, K, generator=generator, dtype=torch.float64).to(alpha)
    pointers = torch.zeros(N, K, dtype=torch.long, device=alpha.device)
    rows = _inner_rows(layout, N)
    block = max(1, PAIR_BLOCK // (K * K))
    for lo in range(0, rows.shape[0], block):
        r = rows[lo : lo + block]
        scores = (alpha[r - 1, :, None] + chain.log_trans).transpose(1, 2)  # (B, K_to, K_from)
        pointers[r] = _draw(scores, uniforms[r])
    last = torch.rand(layout.lengths.shape[0], 1, generator=generator, dtype=torch.float64)
    final = _draw(alpha[layout.ends], last.to(alpha)[:, 0])
    return backtrack(pointers, final, layout)


def _draw(scores: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF draws over the last dim of ``scores`` (..., K) (unnormalised logs), one per
    entry of ``uniforms`` (...); a state of probability 0 is never drawn (``right=True``)."""
    weights = (scores - scores.amax(-1, keepdim=True)).exp()
    cumulative = weights.cumsum(-1)
    targets = (uniforms * cumulative[..., -1]).unsqueeze(-1)
    drawn = torch.searchsorted(cumulative, targets, right=True)[..., 0]
    return drawn.clamp_max(scores.shape[-1] - 1)


def backtrack(pointers: Tensor, final: Tensor, layout: Layout) -> Tensor:
    """The path (N,) with z = ``final`` (S,) at each sequence's end and z_{t-1} =
    pointers[t, z_t] before it. pointers: (N, K) int64 (a sequence's first row is not read).

    All rows make one chain backwards: a sequence's first row points to the previous
    sequence's final state whatever its own. The rows are cut into G groups of about sqrt(N)
    rows (the last one padded past row N - 1, whose state is ``final[-1]``); within every group
    at once, G steps of gathers map the group's last state to each of its rows' states; the
    groups are then chained by pointer doubling (log2 of their number in rounds of gathers)."""
    N, K = pointers.shape
    device = pointers.device
    size = 16 if N < 4096 else 64  # rows per group: G steps, then N / G groups to chain
    n_groups = N // size + 1
    same = torch.arange(K, device=device)
    links = pointers.new_empty(n_groups * size, K)
    links[:N] = pointers  # row 0 is never followed
    links[N + 1 :] = same
    links[layout.starts[1:]] = final[:-1, None]
    links[N] = final[-1]
    links = links.view(n_groups, size, K)
    maps = torch.empty_like(links)  # state of each row given the group's last state
    maps[:, -1] = same
    for g in range(size - 1, 0, -1):
        maps[:, g - 1] = links[:, g].gather(1, maps[:, g])
    before = links[:, 0].gather(1, maps[:, 0])  # the previous group's last state given ours
    chained = torch.cat([before[1:], same[None]])  # group p's last state from p + 1's
    target = torch.arange(1, n_groups + 1, device=device).clamp_max(n_groups - 1)
    for _ in range(max(n_groups - 1, 1).bit_length()):
        chained = chained.gather(1, chained[target])
        target = target[target]
    ends = chained[:, 0]  # the last group's last state is arbitrary (padding): 0
    path = maps.gather(2, ends[:, None, None].expand(n_groups, size, 1))
    return path.reshape(-1)[:N]


def path_log_joint(chain: Chain, layout: Layout, path: Tensor) -> Tensor:
    """(S,) log p(x_s, path_s) per sequence for a path (N,) int64."""
    seq = row_sequence(layout)
    terms = chain.log_emit.gather(1, path[:, None])[:, 0]
    rows = _inner_rows(layout, path.shape[0])
    total = terms.new_zeros(layout.lengths.shape[0]).index_add_(0, seq, terms)
    total = total.index_add(0, seq[rows], chain.log_trans[path[rows - 1], path[rows]])
    return total + chain.log_start[path[layout.starts]]
