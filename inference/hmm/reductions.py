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

from inference.hmm.layout import Layout
from inference.hmm.messages import Chain, boundaries, run_backward, run_forward

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
    out = values.new_empty(n_rows, *values.shape[2:])
    out[layout.rows[layout.valid]] = values[layout.valid]
    return out


def forward_messages(chain: Chain, layout: Layout) -> Tensor:
    """(N, K) alpha_t[k] = log p(x_0..x_t, z_t = k) within each sequence."""
    emit = chain.log_emit[layout.rows]
    b = boundaries(chain, layout, emit, "sum")
    _, alpha, _ = run_forward(b.entry, chain.log_trans, emit, layout.valid, "sum", keep=True)
    assert alpha is not None
    return _scatter(alpha, layout, chain.log_emit.shape[0])


def log_evidence(chain: Chain, layout: Layout) -> Tensor:
    """(S,) log p(x_s) per sequence, by the forward messages alone."""
    emit = chain.log_emit[layout.rows]
    b = boundaries(chain, layout, emit, "sum")
    if b.end is not None:
        return torch.logsumexp(b.end[layout.last_chunks()], -1)
    last, _, _ = run_forward(b.entry, chain.log_trans, emit, layout.valid, "sum", keep=False)
    return torch.logsumexp(last, -1)  # one chunk per sequence, in order


def forward_backward(chain: Chain, layout: Layout) -> Posterior:
    """The posterior marginals, pairwise sums and log evidence (sum-product)."""
    N = chain.log_emit.shape[0]
    emit = chain.log_emit[layout.rows]
    b = boundaries(chain, layout, emit, "sum")
    _, alpha, _ = run_forward(b.entry, chain.log_trans, emit, layout.valid, "sum", keep=True)
    assert alpha is not None
    beta = _scatter(run_backward(b.exit, chain.log_trans, emit, layout.valid), layout, N)
    alpha = _scatter(alpha, layout, N)
    log_z = torch.logsumexp(alpha[layout.ends], -1)
    seq = row_sequence(layout)
    marginals = (alpha + beta - log_z[seq, None]).exp()
    pairs = _pair_sums(alpha, chain.log_emit + beta, chain.log_trans, log_z, layout, seq)
    return Posterior(log_z, marginals, pairs, marginals[layout.starts].sum(0))


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
    emit = chain.log_emit[layout.rows]
    b = boundaries(chain, layout, emit, "max")
    _, msgs, ptrs = run_forward(b.entry, chain.log_trans, emit, layout.valid, "max", keep=True)
    assert msgs is not None and ptrs is not None
    ptrs[:, 0] = b.entry_arg
    final_msgs = _scatter(msgs, layout, N)[layout.ends]
    best, final = final_msgs.max(-1)
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
    pointers[t, z_t] before it, by pointer doubling: log2(longest) rounds of gathers instead of
    a loop over time. pointers: (N, K) int64 (a sequence's first row is not read)."""
    N, K = pointers.shape
    device = pointers.device
    ends = layout.ends
    is_end = torch.zeros(N, dtype=torch.bool, device=device)
    is_end[ends] = True
    target = torch.arange(N, device=device) + 1
    target[ends] = ends
    maps = torch.arange(K, device=device).expand(N, K).clone()  # z at row -> z at target
    inner = ~is_end
    maps[inner] = pointers[target[inner]]
    for _ in range(int(layout.lengths.max() - 1).bit_length()):
        maps = maps.gather(1, maps[target])
        target = target[target]
    return maps.gather(1, final[row_sequence(layout), None])[:, 0]


def path_log_joint(chain: Chain, layout: Layout, path: Tensor) -> Tensor:
    """(S,) log p(x_s, path_s) per sequence for a path (N,) int64."""
    seq = row_sequence(layout)
    terms = chain.log_emit.gather(1, path[:, None])[:, 0]
    rows = _inner_rows(layout, path.shape[0])
    total = terms.new_zeros(layout.lengths.shape[0]).index_add_(0, seq, terms)
    total = total.index_add(0, seq[rows], chain.log_trans[path[rows - 1], path[rows]])
    return total + chain.log_start[path[layout.starts]]
