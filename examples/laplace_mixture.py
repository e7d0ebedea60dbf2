"""A user's own mixture, outside the package: K products of Laplace distributions.

    mixem fit --model examples.laplace_mixture:LaplaceMixture --guide categorical --k 3 \
              --data builtin:iris --out runs/laplace        # from the repository root

Plain Pyro: the contract (site "z" over range(K), site "x" observed, both in plate "data";
``n_components``) plus ``from_centres``, the start mixem builds it from. Laplace is outside the
table of exponential families, so the E-step takes Pyro's log_prob and the M-step is the
gradient one (``--m-step gradient``'s settings apply). The constructor takes the parameters
by name, so ``inference.load`` rebuilds a saved fit.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints


class LaplaceMixture(PyroModule):
    """weights (K,), locs (K, D), scales (K, D) of K Laplace components."""

    def __init__(
        self, locs: torch.Tensor, scales: torch.Tensor, weights: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        k = locs.shape[0]
        start = locs.new_full((k,), 1 / k) if weights is None else weights
        self.weights = PyroParam(start, constraint=constraints.simplex)
        self.locs = PyroParam(locs)
        self.scales = PyroParam(scales, constraint=constraints.positive)
        self.n_components = k

    @classmethod
    def from_centres(cls, centres: torch.Tensor, x: torch.Tensor) -> LaplaceMixture:
        """Start at ``centres`` (K, D), every scale the data's mean absolute deviation (D,)."""
        spread = (x - x.median(0).values).abs().mean(0).clamp_min(1e-3)
        return cls(centres.clone(), spread.expand_as(centres).clone())

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(self.weights))
            pyro.sample("x", dist.Laplace(self.locs[z], self.scales[z]).to_event(1), obs=x)
