"""Mixture of products of Poissons, for count data.

    z_i ~ Categorical(weights)
    x_id | z_i = c ~ Poisson(rates[c, d])     independently over the D features

With a Delta guide and fixed uniform weights the E-step assigns each point to the component of
least generalised I-divergence sum_d x log(x / rate) - x + rate, the Bregman divergence of the
Poisson family, and the M-step takes the component's mean (Banerjee et al. 2005).

The M-step floors the rates at MIN_RATE: a feature that is 0 in every point of a component would
get rate 0, under which any later non-zero count has log-likelihood -inf (and the parameter an
unconstrained value of -inf). 1e-10 keeps such mismatches decisive but finite.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints

from inference.errors import MixemError
from models.common import (
    init_weights,
    is_whole,
    keep_where_empty,
    mixing_prior,
    reject_rows,
    safe_counts,
    update_weights,
)

MIN_RATE = 1e-10


class PoissonMixture(PyroModule):
    """Parameters ``weights`` (K,) and ``rates`` (K, D) > 0.

    Args:
        rates: (K, D) initial rates; their dtype and device are the model's.
        weights: (K,) initial weights, uniform when ``None``.
        learn_weights: False keeps the weights fixed (uniform by default).
    """

    weights: Tensor
    rates: Tensor

    # constructor keywords the CLI passes (see inference.model_init)
    cli_options = ("learn_weights",)

    def __init__(
        self, rates: Tensor, weights: Tensor | None = None, learn_weights: bool = True
    ) -> None:
        super().__init__()
        if rates.dim() != 2:
            raise MixemError(f"rates must have shape (K, D), got {tuple(rates.shape)}")
        if not bool((rates > 0).all()):
            raise MixemError("rates must be > 0")
        init_weights(self, weights, rates, learn_weights)
        self.rates = PyroParam(  # type: ignore[assignment]
            rates.detach().clone(), constraint=constraints.positive
        )

    @classmethod
    def from_centres(cls, centres: Tensor, x: Tensor, **options: Any) -> PoissonMixture:
        """rates halfway between ``centres`` (K, D) (data rows) and the mean of ``x`` (N, D),
        so a zero in the chosen row does not start as a rate of (almost) 0."""
        validate(x)
        return cls((0.5 * (centres + x.mean(0))).clamp_min(MIN_RATE), **options)

    @property
    def n_components(self) -> int:
        return int(self.rates.shape[0])

    def validate_data(self, x: Tensor) -> None:
        """Every entry of ``x`` (N, D) must be a whole number >= 0."""
        validate(x)

    def forward(self, x: Tensor) -> None:
        """The generative model; ``x`` is (N, D) of non-negative whole numbers."""
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", mixing_prior(self.weights))
            pyro.sample("x", dist.Poisson(self.rates[z]).to_event(1), obs=x)

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """rates = weighted mean floored at MIN_RATE; an empty component keeps its rates."""
        counts = stats["counts"]
        mean = (stats["sum_x"] / safe_counts(counts)[:, None]).clamp_min(MIN_RATE)
        self.rates = keep_where_empty(mean, self.rates.detach(), counts)
        update_weights(self, counts)


def validate(x: Tensor) -> None:
    """Raise MixemError unless ``x`` (N, D) holds non-negative whole numbers."""
    reject_rows(x < 0, x, "poisson", "have negative values", "counts must be >= 0")
    reject_rows(
        ~is_whole(x), x, "poisson", "have non-integer values", "counts must be whole numbers"
    )
