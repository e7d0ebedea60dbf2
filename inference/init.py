"""Starting points: greedy k-means++ (Arthur & Vassilvitskii 2007, as scikit-learn), random rows,
and K-means (scikit-learn's ``KMeans(n_init=1)``: Lloyd's loop from greedy k-means++), whose
hard labels give GaussianMixture's ``init_params="kmeans"`` start (``start_model``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

# the named starts of the estimator and the CLI; "auto": "kmeans" for a model that can start from
# labels (``from_labels``: gmm, as GaussianMixture), "kmeans++" for every other
STARTS = ("auto", "kmeans", "kmeans++", "random")


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


def kmeans(
    x: Tensor, k: int, generator: torch.Generator, max_iter: int = 300, tol: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """(centres (k, D), labels (N,)) of K-means on ``x`` (N, D): Lloyd's loop (the Delta guide
    on ``RestrictedGMM``) from greedy k-means++ drawn with ``generator``; scikit-learn's
    ``KMeans(n_clusters=k, n_init=1)`` defaults (``max_iter=300``, ``tol=1e-4``)."""
    from inference.em import fit
    from inference.guides import Delta
    from models.restricted_gmm import RestrictedGMM

    start = RestrictedGMM(kmeans_plusplus(x, k, generator))
    result = fit(start, x, Delta(), max_iter=max_iter, tol=tol)
    return result.model.locs.detach().clone(), result.labels


def resolve_start(spec: str, model_class: Any) -> str:
    """The start ``spec`` names for ``model_class``: "auto" is "kmeans" for a model with
    ``from_labels`` (gmm) and "kmeans++" otherwise; "k-means++" is "kmeans++"."""
    if spec == "auto":
        return "kmeans" if hasattr(model_class, "from_labels") else "kmeans++"
    return "kmeans++" if spec == "k-means++" else spec


def start_model(
    model_class: Any, x: Tensor, k: int, spec: str, seed: int, options: dict[str, Any]
) -> Any:
    """A ``model_class`` for ``x`` (N, D) with ``k`` components from the named start ``spec``.

    "kmeans++" and "random": ``from_centres`` at those rows. "kmeans": K-means from k-means++
    (``kmeans``); a model with ``from_labels`` (gmm) starts from its hard labels, as
    GaussianMixture's ``init_params="kmeans"`` does (weights, means, covariances + reg_covar
    of each cluster), any other from its centres. ``seed`` draws the rows.
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    spec = resolve_start(spec, model_class)
    if spec == "kmeans":
        centres, labels = kmeans(x, k, generator)
        from_labels = getattr(model_class, "from_labels", None)
        if from_labels is not None:
            return from_labels(labels, x, k, **options)
    elif spec == "random":
        centres = random_points(x, k, generator)
    else:
        centres = kmeans_plusplus(x, k, generator)
    from inference.user_model import build

    return build(model_class, centres, x, options)
