"""Mixture of products of Bernoullis, for binary data.

    z_i ~ Categorical(weights)
    x_id | z_i = c ~ Bernoulli(probs[c, d])     independently over the D features

With a Delta guide and fixed uniform weights the E-step assigns each point to the component of
least logistic loss, the Bregman divergence of the Bernoulli family, and the M-step takes the
component's mean: Bregman hard clustering (Banerjee et al. 2005).

The M-step clips the probabilities to [PROB_EPS, 1 - PROB_EPS]: a component in which a feature
was never on would otherwise give that feature probability 0, and any later point with it on a
log-likelihood of -inf under that component (and a -inf unconstrained parameter). With 1e-6 a
mismatch costs log(1e-6) ~ -13.8 nats: still decisive, never infinite.
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
    keep_where_empty,
    mixing_prior,
    reject_rows,
    safe_counts,
    update_weights,
)

PROB_EPS = 1e-6


class BernoulliMixture(PyroModule):
    """Parameters ``weights`` (K,) and ``probs`` (K, D) in (0, 1).

    Args:
        probs: (K, D) initial probabilities of a 1; their dtype and device are the model's.
        weights: (K,) initial weights, uniform when ``None``.
        learn_weights: False keeps the weights fixed (uniform by default).
    """

    weights: Tensor
    probs: Tensor

    # constructor keywords the CLI passes (see inference.model_init)
    cli_options = ("learn_weights",)

    def __init__(
        self, probs: Tensor, weights: Tensor | None = None, learn_weights: bool = True
    ) -> None:
        super().__init__()
        if probs.dim() != 2:
            raise MixemError(f"probs must have shape (K, D), got {tuple(probs.shape)}")
        if not bool(((probs > 0) & (probs < 1)).all()):
            raise MixemError("probs must lie strictly between 0 and 1")
        init_weights(self, weights, probs, learn_weights)
        self.probs = PyroParam(  # type: ignore[assignment]
            probs.detach().clone(), constraint=constraints.unit_interval
        )

    @classmethod
    def from_centres(cls, centres: Tensor, x: Tensor, **options: Any) -> BernoulliMixture:
        """probs halfway between ``centres`` (K, D) (data rows) and the mean of ``x`` (N, D).

        A bare data row would start with probabilities of exactly 0 and 1 (clipped); the
        blend keeps every start away from the clip so early assignments are not all ties.
        """
        validate(x)
        probs = (0.5 * (centres + x.mean(0))).clamp(PROB_EPS, 1 - PROB_EPS)
        return cls(probs, **options)

    @property
    def n_components(self) -> int:
        return int(self.probs.shape[0])

    def validate_data(self, x: Tensor) -> None:
        """Every entry of ``x`` (N, D) must be 0 or 1."""
        validate(x)

    def forward(self, x: Tensor) -> None:
        """The generative model; ``x`` is (N, D) of 0s and 1s."""
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", mixing_prior(self.weights))
            pyro.sample("x", dist.Bernoulli(probs=self.probs[z]).to_event(1), obs=x)

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """probs = clipped weighted mean; an empty component keeps its probs."""
        counts = stats["counts"]
        mean = (stats["sum_x"] / safe_counts(counts)[:, None]).clamp(PROB_EPS, 1 - PROB_EPS)
        self.probs = keep_where_empty(mean, self.probs.detach(), counts)
        update_weights(self, counts)


def validate(x: Tensor) -> None:
    """Raise MixemError unless every entry of ``x`` (N, D) is 0 or 1."""
    reject_rows(
        (x != 0) & (x != 1),
        x,
        "bernoulli",
        "have values other than 0 and 1",
        "binarise the data first (e.g. x > threshold)",
    )
