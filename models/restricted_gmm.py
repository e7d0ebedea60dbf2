"""The restricted Gaussian mixture: identity covariances, uniform weights, only the means learned.

    z_i ~ Categorical(1/K, ..., 1/K)
    x_i | z_i = c ~ Normal(locs[c], I)

so log p(x_i, z_i = c) = -||x_i - locs[c]||^2 / 2 - (D/2) log 2pi - log K.

The observation is drawn from ``IsotropicNormalComponents(locs, z)``: when Pyro enumerates
``z`` its log-density is the (n, K) table by one GEMM. ``fast=False`` writes the textbook
``Normal(locs[z], 1).to_event(1)`` instead, which enumerates through a (K, n, D) tensor; both
define the same model, and the tests hold them to the same table.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor

from inference.responsibilities import Responsibilities
from models.components import IsotropicNormalComponents


class RestrictedGMM(PyroModule):
    """Mixture of K unit-covariance Gaussians with equal weights; ``locs`` are the parameters.

    Args:
        locs: (K, D) initial means; their dtype and device are the model's.
        fast: observe through the GEMM component distribution (default) rather than
            ``Normal(locs[z], 1)``; the densities are equal, only speed and memory differ.
    """

    locs: Tensor  # a PyroParam: reading it gives the constrained tensor

    def __init__(self, locs: Tensor, fast: bool = True) -> None:
        super().__init__()
        if locs.dim() != 2:
            raise ValueError(f"locs must have shape (K, D), got {tuple(locs.shape)}")
        self.locs = PyroParam(locs.detach().clone())  # type: ignore[assignment]
        self.fast = fast
        # fixed for the model's life (not a parameter): statistics summed at different times or
        # on different workers stay additive
        self.register_buffer("origin", locs.detach().mean(0).clone())

    @classmethod
    def from_centres(cls, centres: Tensor, x: Tensor, fast: bool = True) -> RestrictedGMM:
        """Start at ``centres`` (K, D) (e.g. from k-means++ on ``x`` (N, D))."""
        return cls(centres, fast=fast)

    @property
    def n_components(self) -> int:
        return int(self.locs.shape[0])

    def forward(self, x: Tensor) -> None:
        """The generative model; ``x`` is (N, D)."""
        locs = self.locs
        uniform = torch.zeros(locs.shape[0], dtype=locs.dtype, device=locs.device)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=uniform))
            if self.fast:
                pyro.sample("x", IsotropicNormalComponents(locs, z), obs=x)
            else:
                pyro.sample("x", dist.Normal(locs[z], 1.0).to_event(1), obs=x)

    def reference(self) -> Tensor:
        """(D,) the point the statistics are taken from: the initial locs' mean, fixed."""
        origin: Tensor = self.origin
        return origin

    def sufficient_statistics(self, x: Tensor, q: Responsibilities) -> dict[str, Tensor]:
        """Sums over points for the M-step, additive across chunks, workers and M-steps.

        The data are summed relative to ``reference()`` (a fixed point near the data): float32
        sums of raw coordinates far from the origin (1e8, say) round away the spread of a
        cluster, sums of offsets do not.

        Args:
            x: (N, D) data.
            q: responsibilities of the N points.
        Returns:
            ``counts`` (K,) and ``sum_dx`` (K, D) = sum_i q_ic (x_i - reference).
        """
        K = self.n_components
        return {"counts": q.counts(K), "sum_dx": q.weighted_sum(x, K, offset=self.reference())}

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """locs[c] = weighted mean of the points in c; a component with no weight keeps its mean."""
        counts = stats["counts"][:, None]
        old = self.locs.detach()
        tiny = torch.finfo(old.dtype).tiny
        means = self.reference() + stats["sum_dx"] / counts.clamp_min(tiny)
        self.locs = torch.where(counts > 0, means, old)
