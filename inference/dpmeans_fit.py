"""``inference.fit(model, x, dp_lambda=...)``: DP-means from a model instance.

The instance is a template: its class names the family (restricted GMM, Poisson, Bernoulli),
and DP-means builds a new model of each K from centres (``named_factory``), with the fixed
uniform weights of the small-variance limit. What ``fit`` would refuse with a fixed K
(another guide family, several workers, a chosen M-step) is refused here with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from inference.distributed import LOCAL, Reducer
from inference.dpmeans import DPMeansRecord, DPMeansResult, dp_means, named_factory
from inference.errors import MixemError
from inference.guides import Delta


def template_name(model: Any) -> str:
    """The DP-means family of a shipped model instance (its exact class), or a MixemError."""
    from models import BernoulliMixture, PoissonMixture, RestrictedGMM

    names: dict[Any, str] = {
        RestrictedGMM: "restricted-gmm",
        PoissonMixture: "poisson",
        BernoulliMixture: "bernoulli",
    }
    name = names.get(type(model))
    if name is None:
        raise MixemError(
            f"fit(dp_lambda=...) takes a RestrictedGMM, PoissonMixture or BernoulliMixture "
            f"as the template, got {type(model).__name__}; for another family call "
            "inference.dpmeans.dp_means with a factory centres (K, D) -> model"
        )
    return name


def fit_dp_means(
    model: Any,
    x: Tensor,
    guide: Any,
    lam: float | None,
    max_k: int | None,
    max_iter: int,
    m_step: Any,
    reducer: Reducer,
    *,
    callback: Callable[[DPMeansRecord], None] | None,
    should_stop: Callable[[], bool] | None,
) -> DPMeansResult:
    """DP-means on ``x`` (N, D) with ``model``'s family (see the module docstring)."""
    if lam is None:
        raise MixemError("max_k is a DP-means setting: give dp_lambda too (or leave max_k out)")
    if guide is not None and not isinstance(guide, Delta):
        raise MixemError(
            f"DP-means is the Delta guide's limit; got guide {guide!r} (leave guide out or "
            "pass Delta())"
        )
    if reducer is not LOCAL:
        raise MixemError("DP-means runs on one process; leave reducer out")
    if m_step != "auto":
        raise MixemError("DP-means takes its M-step from the model's m_step; leave m_step out")
    factory = named_factory(template_name(model))
    return dp_means(
        factory, x, lam, max_k=max_k, max_iter=max_iter, callback=callback, should_stop=should_stop
    )
