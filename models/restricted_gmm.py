"""The restricted Gaussian mixture: identity covariances, uniform weights, only the means learned.

    z_i ~ Categorical(1/K, ..., 1/K)
    x_i | z_i = c ~ Normal(locs[c], I)

so log p(x_i, z_i = c) = -||x_i - locs[c]||^2 / 2 - (D/2) log 2pi - log K.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor

from inference.responsibilities import Responsibilities


class RestrictedGMM(PyroModule):
    """Mixture of K unit-covariance Gaussians with equal weights; ``locs`` are the parameters.

    Args:
        locs: (K, D) initial means; their dtype and device are the model's.
    """

    locs: Tensor  # a PyroParam: reading it gives the constrained tensor

    def __init__(self, locs: Tensor) -> None:
        super().__init__()
        if locs.dim() != 2:
            raise ValueError(f"locs must have shape (K, D), got {tuple(locs.shape)}")
        self.locs = PyroParam(locs.detach().clone())  # type: ignore[assignment]

    @classmethod
    def from_centres(cls, centres: Tensor, x: Tensor) -> RestrictedGMM:
        """Start at ``centres`` (K, D) (e.g. from k-means++ on ``x`` (N, D))."""
        return cls(centres)

    @property
    def n_components(self) -> int:
        return int(self.locs.shape[0])

    def forward(self, x: Tensor) -> None:
        """The generative model; ``x`` is (N, D)."""
        locs = self.locs
        uniform = torch.zeros(locs.shape[0], dtype=locs.dtype, device=locs.device)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=uniform))
            pyro.sample("x", dist.Normal(locs[z], 1.0).to_event(1), obs=x)

    def sufficient_statistics(self, x: Tensor, q: Responsibilities) -> dict[str, Tensor]:
        """Sums over points for the M-step.

        Args:
            x: (N, D) data.
            q: responsibilities of the N points.
        Returns:
            ``counts`` (K,) and ``sum_x`` (K, D).
        """
        K = self.n_components
        return {"counts": q.counts(K), "sum_x": q.weighted_sum(x, K)}

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """locs[c] = weighted mean of the points in c; a component with no weight keeps its mean."""
        counts = stats["counts"][:, None]
        old = self.locs.detach()
        self.locs = torch.where(
            counts > 0, stats["sum_x"] / counts.clamp_min(torch.finfo(old.dtype).tiny), old
        )
