"""The E-step of an HMM: the best q over whole state paths within a guide family, and its ELBO.

For q over paths and the model p(x, z), ELBO(q) = E_q[log p(x, z)] + H(q) <= log p(x). Per
family (``parse_guide``'s names):

* ``delta``: q = the point mass at the most probable path (Viterbi); H = 0, so
  ELBO = log p(x, path). EM with it is Viterbi training (segmental K-means).
* ``categorical``: q = the exact posterior over paths (forward-backward); ELBO = log p(x).
* ``tempered:T``: q(path) proportional to p(path, x)^(1/T), T > 0: the forward-backward of the
  chain whose log-potentials are divided by T, whose log normaliser is log Z_T. Since
  log q = log p / T - log Z_T, H(q) = log Z_T - E_q[log p] / T and
  ELBO = (1 - 1/T) E_q[log p(x, z)] + log Z_T. T = 1 is ``categorical``; T -> 0 tends to
  ``delta`` (Z_T^T -> the best path's p).
* ``sampled[:SEED]``: q = the point mass at one path drawn from the exact posterior (forward
  filtering, backward sampling; stochastic EM); ELBO = log p(x, drawn path).

Every record also carries log p(x) (the forward messages), so kl_gap = log p(x) - ELBO.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from inference.errors import MixemError
from inference.hmm.layout import Layout
from inference.hmm.messages import Chain
from inference.hmm.reductions import (
    _inner_rows,
    forward_backward,
    log_evidence,
    path_log_joint,
    sample_path,
    viterbi,
)

GUIDES = "delta, categorical, tempered:T (T > 0), sampled[:SEED]"


class HMMGuide(NamedTuple):
    """kind: "delta", "categorical", "tempered" or "sampled"; temperature: T (tempered);
    seed: the sampled family's generator seed."""

    kind: str
    temperature: float = 1.0
    seed: int = 0

    @property
    def hard(self) -> bool:
        """q is a point mass on one path: the fit stops when the path stops changing."""
        return self.kind in ("delta", "sampled")


class HMMEStep(NamedTuple):
    """q and what the M-step and the record need.

    labels: (N,) int64, the path (delta, sampled) or each step's most probable state.
    marginals: (N, K) q(z_t = k), or None for a path. start: (K,) sum over sequences of
    q(z_0 = k). pairs: (K, K) sum over t of q(z_{t-1} = i, z_t = j).
    elbo, log_evidence: summed over the sequences.
    """

    labels: Tensor
    marginals: Tensor | None
    start: Tensor
    pairs: Tensor
    elbo: float
    log_evidence: float

    @property
    def weights(self) -> Tensor:
        """(N, K) marginals, or the (N,) path itself (one-hot weights)."""
        return self.labels if self.marginals is None else self.marginals


def parse_guide(spec: str, seed: int = 0) -> HMMGuide:
    """``delta``, ``categorical``, ``tempered:T`` (T finite > 0), ``sampled[:SEED]``."""
    if not isinstance(spec, str):
        raise MixemError(f"guide must be a string, one of: {GUIDES}; got {type(spec).__name__}")
    name, _, arg = spec.partition(":")
    if name in ("delta", "categorical") and not arg:
        return HMMGuide(name)
    if name == "tempered" and arg:
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if 0 < value < math.inf:
            return HMMGuide("tempered", temperature=value)
        raise MixemError(f"bad guide {spec!r}: tempered:T needs a finite number T > 0")
    if name == "sampled":
        if not arg:
            return HMMGuide("sampled", seed=seed)
        if arg.isdigit():
            return HMMGuide("sampled", seed=int(arg))
        raise MixemError(f"bad guide {spec!r}: sampled:SEED needs an integer SEED >= 0")
    raise MixemError(f"unknown guide {spec!r}; choose one of: {GUIDES}")


def e_step(
    chain: Chain, layout: Layout, guide: HMMGuide, generator: torch.Generator | None = None
) -> HMMEStep:
    """The best q of ``guide``'s family for ``chain`` (see the module docstring)."""
    if guide.kind in ("delta", "sampled"):
        if guide.kind == "delta":
            path, _ = viterbi(chain, layout)
        else:
            path = sample_path(chain, layout, generator or torch.Generator().manual_seed(0))
        start, pairs = path_counts(path, layout, chain.log_start.shape[0], chain.log_emit.dtype)
        elbo = float(path_log_joint(chain, layout, path).sum())
        evidence = float(log_evidence(chain, layout).sum())
        return HMMEStep(path, None, start, pairs, elbo, evidence)
    if guide.kind == "categorical":
        post = forward_backward(chain, layout)
        evidence = float(post.log_evidence.sum())
        return HMMEStep(post.marginals.argmax(1), post.marginals, post.start, post.pairs,
                        evidence, evidence)  # fmt: skip
    post = forward_backward(chain.scaled(1.0 / guide.temperature), layout)
    expected = expected_log_joint(chain, post.marginals, post.start, post.pairs)
    log_z = float(post.log_evidence.sum())
    elbo = (1.0 - 1.0 / guide.temperature) * expected + log_z
    evidence = float(log_evidence(chain, layout).sum())
    return HMMEStep(post.marginals.argmax(1), post.marginals, post.start, post.pairs, elbo,
                    evidence)  # fmt: skip


def path_counts(path: Tensor, layout: Layout, K: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(K,) first states and (K, K) transitions counted along ``path`` (N,) int64."""
    start = torch.bincount(path[layout.starts], minlength=K).to(dtype)
    rows = _inner_rows(layout, path.shape[0])
    pairs = torch.bincount(path[rows - 1] * K + path[rows], minlength=K * K)
    return start, pairs.reshape(K, K).to(dtype)


def _weighted(weights: Tensor, log_values: Tensor) -> Tensor:
    """sum of weights * log_values, with 0 * log 0 = 0 (an impossible event q never visits)."""
    return torch.where(weights > 0, weights * log_values, 0.0).sum()


def expected_log_joint(chain: Chain, marginals: Tensor, start: Tensor, pairs: Tensor) -> float:
    """E_q[log p(x, z)] from q's marginals (N, K), first states (K,) and pair sums (K, K)."""
    total = (
        _weighted(marginals, chain.log_emit)
        + _weighted(start, chain.log_start)
        + _weighted(pairs, chain.log_trans)
    )
    return float(total)
