"""Starting points: greedy k-means++ (Arthur & Vassilvitskii 2007, as scikit-learn), random rows."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _sq_dist(x: Tensor, centres: Tensor) -> Tensor:
    """(N, M) squared distances of rows of ``x`` (N, D) to ``centres`` (M, D), clamped at 0."""
    return torch.cdist(x, centres).square()


def kmeans_plusplus(
    x: Tensor, k: int, generator: torch.Generator, n_local_trials: int | None = None
) -> Tensor:
    """Greedy k-means++: each new centre is the best of ``n_local_trials`` D^2-sampled candidates.

    Args:
        x: (N, D) data.
        k: number of centres, 1 <= k <= N.
        generator: torch generator on ``x``'s device (makes the choice reproducible).
        n_local_trials: candidates per centre; scikit-learn's 2 + floor(ln k) when None.
    Returns:
        (k, D) rows of ``x``.
    """
    rows, n = x, x.shape[0]
    # cdist expands ||x||^2 - 2 x.c + ||c||^2, which far from the origin (1e8 in float32) cancels
    # to noise; distances of centred data (scikit-learn centres them too) keep the spread
    x = x - x.double().mean(0).to(x.dtype)
    trials = n_local_trials or 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    chosen = [first]
    closest = _sq_dist(x, x[first : first + 1])[:, 0]
    for _ in range(1, k):
        potential = closest.sum()
        if potential <= 0:  # every point already coincides with a centre: pick any unused row
            unused = [i for i in range(n) if i not in set(chosen)]
            chosen.append(unused[0])
            continue
        draws = torch.rand(trials, generator=generator, device=x.device, dtype=x.dtype)
        cumulative = torch.cumsum(closest, 0)
        candidates = torch.searchsorted(cumulative, draws * potential).clamp_max(n - 1)
        candidate_closest = torch.minimum(closest[None, :], _sq_dist(x, x[candidates]).T)
        best = int(candidate_closest.sum(1).argmin())
        chosen.append(int(candidates[best]))
        closest = candidate_closest[best]
    return rows[chosen].clone()


def random_points(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """(k, D) distinct rows of ``x`` (N, D) chosen uniformly at random."""
    return x[torch.randperm(x.shape[0], generator=generator, device=x.device)[:k]].clone()
