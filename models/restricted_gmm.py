"""The restricted Gaussian mixture: identity covariances, uniform weights, only the means learned.

    z_i ~ Categorical(1/K, ..., 1/K)
    x_i | z_i = c ~ Normal(locs[c], I)

so log p(x_i, z_i = c) = -||x_i - locs[c]||^2 / 2 - (D/2) log 2pi - log K.

Plain Pyro, the lecture's ``Normal(locs[z], 1).to_event(1)``. The inference code reads that
site as an exponential family (``inference.expfam``: T(x) = x - r, eta_c = locs_c - r, the
fixed unit scale folded into log h(x)), so the enumerated table is one GEMM and an EM
iteration one pass over the data; nothing here is written for speed.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor


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
        # fixed for the model's life (not a parameter): statistics summed at different times or
        # on different workers stay additive
        self.register_buffer("origin", locs.detach().mean(0).clone())

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

    def reference(self) -> Tensor:
        """(D,) the point the M-step's sums are taken from: the initial locs' mean, fixed.

        Float32 sums of raw coordinates far from the origin (1e8, say) round away the spread
        of a cluster, sums of offsets do not; fixed, so sums taken under different parameters
        (stepwise mini-batch EM, several workers) add up.
        """
        origin: Tensor = self.origin
        return origin

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """locs[c] = weighted mean of the points in c; a component with no weight keeps its mean.

        Args:
            stats: the Normal family's sums (``inference.expfam``): ``counts`` (K,),
                ``sum_dx`` (K, D) = sum_i q_ic (x_i - shift) and ``shift`` (D,).
        """
        counts = stats["counts"][:, None]
        old = self.locs.detach()
        tiny = torch.finfo(old.dtype).tiny
        means = stats["shift"] + stats["sum_dx"] / counts.clamp_min(tiny)
        self.locs = torch.where(counts > 0, means, old)
