"""Starting points: greedy k-means++ (Arthur & Vassilvitskii 2007, as scikit-learn), random rows."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _sq_dist(x: Tensor, centres: Tensor) -> Tensor:
    """(N, M) squared distances of rows of ``x`` (N, D) to ``centres`` (M, D), clamped at 0."""
    return torch.cdist(x, centres).square()


def kmeans_plusplus_indices(
    x: Tensor, k: int, generator: torch.Generator, n_local_trials: int | None = None
) -> list[int]:
    """The ``k`` row indices of ``x`` (N, D) that greedy k-means++ picks (see ``kmeans_plusplus``).

    The draws are float64 uniforms, compared with float64 cumulative sums of the distances,
    and the candidates are compared by float64 sums: float32 and float64 copies of the same
    data pick the same rows from the same seed (but at a tie within float32's rounding).
    Once every point coincides with a centre (constant data, K above the number of distinct
    points) the remaining picks are the lowest unused indices, found in one pass: O(N + K).
    """
    n = x.shape[0]
    # cdist expands ||x||^2 - 2 x.c + ||c||^2, which far from the origin (1e8 in float32) cancels
    # to noise; distances of centred data (scikit-learn centres them too) keep the spread
    x = x - x.double().mean(0).to(x.dtype)
    trials = n_local_trials or 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    chosen = [first]
    taken = {first}
    cursor = 0  # every index below it is taken: the refill's next candidate
    closest = _sq_dist(x, x[first : first + 1])[:, 0].double()
    for _ in range(1, k):
        potential = closest.sum()
        if potential <= 0:  # every point already coincides with a centre: the next unused row
            while cursor in taken:
                cursor += 1
            chosen.append(cursor)
            taken.add(cursor)
            continue
        draws = torch.rand(trials, generator=generator, device=x.device, dtype=torch.float64)
        cumulative = torch.cumsum(closest, 0)
        candidates = torch.searchsorted(cumulative, draws * potential).clamp_max(n - 1)
        distances = _sq_dist(x, x[candidates]).T.double()
        candidate_closest = torch.minimum(closest[None, :], distances)
        best = int(candidate_closest.sum(1).argmin())
        chosen.append(int(candidates[best]))
        taken.add(chosen[-1])
        closest = candidate_closest[best]
    return chosen


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
        (k, D) rows of ``x``, the same rows for float32 and float64 copies of the data.
    """
    return x[kmeans_plusplus_indices(x, k, generator, n_local_trials)].clone()


def random_points(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """(k, D) distinct rows of ``x`` (N, D) chosen uniformly at random."""
    return x[torch.randperm(x.shape[0], generator=generator, device=x.device)[:k]].clone()
