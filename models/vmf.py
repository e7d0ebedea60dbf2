"""Mixture of von Mises-Fisher distributions, for unit vectors (directions) in D >= 2 dimensions.

    z_i ~ Categorical(weights)
    x_i | z_i = c ~ vMF(locs[c], concentration[c]),  log p = log C_D(kappa) + kappa locs[c] . x

    log C_D(kappa) = (D/2 - 1) log kappa - (D/2) log 2pi - log I_{D/2-1}(kappa)

torch has no Bessel I of general order, so ``log_bessel_iv`` computes it (see there). With one
``concentration`` shared by all components, fixed uniform weights and a Delta guide, the E-step
assigns each point to the mean direction of largest cosine and the M-step normalises the
component's sum: spherical K-means (Banerjee et al. 2005).

Data: every row must have unit norm (within 1e-6); zero or other rows are rejected, not
normalised, so that a fit never silently changes the data. Rows inside the tolerance are
renormalised by the model so float rounding cannot fail the sphere's support check.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import Tensor

from inference.errors import MixemError
from models.common import (
    init_weights,
    keep_where_empty,
    mixing_prior,
    reject_rows,
    safe_counts,
    update_weights,
)
from models.vmf_bessel import log_bessel_iv

UNIT_TOL = 1e-6
NEWTON_STEPS = 5
MAX_CONCENTRATION = 1e10  # all points of a component identical: kappa = inf, capped here


def log_normaliser(concentration: Tensor, d: int) -> Tensor:
    """log C_d(kappa) of the vMF density on the unit sphere in R^d; same shape as kappa > 0."""
    v = d / 2 - 1
    log_iv, _ = log_bessel_iv(v, concentration)
    return v * torch.log(concentration) - (d / 2) * math.log(2 * math.pi) - log_iv


def mean_resultant(concentration: Tensor, d: int) -> Tensor:
    """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa): E ||x|| along the mean, in [0, 1)."""
    return log_bessel_iv(d / 2 - 1, concentration)[1]


def solve_concentration(r: Tensor, d: int) -> Tensor:
    """The kappa with A_d(kappa) = r (the maximum-likelihood concentration), r in (0, 1).

    Banerjee et al. (2005)'s approximation kappa = r (d - r^2) / (1 - r^2) starts NEWTON_STEPS
    Newton steps on A_d(kappa) - r, with A_d' = 1 - A_d^2 - (d - 1) A_d / kappa (Sra 2012).
    For large kappa that derivative is a difference of nearly equal terms, O(1/kappa) each,
    and loses its digits; a step that is not finite or would move kappa by more than a factor
    of 2 is therefore refused (the start is then already within O(1 - r) relative).
    """
    r = r.clamp(1e-12, 1 - 1e-15)
    kappa = (r * (d - r * r) / (1 - r * r)).clamp(max=MAX_CONCENTRATION)
    for _ in range(NEWTON_STEPS):
        a = mean_resultant(kappa, d)
        slope = 1 - a * a - (d - 1) * a / kappa
        new = kappa - (a - r) / slope
        ok = torch.isfinite(new) & (slope > 0) & (new > kappa / 2) & (new < 2 * kappa)
        kappa = torch.where(ok, new, kappa)
    return kappa


class VonMisesFisher(dist.TorchDistribution):
    """vMF on the unit sphere: ``loc`` (..., D) unit vectors, ``concentration`` (...) > 0."""

    arg_constraints: ClassVar[dict[str, Any]] = {
        "loc": constraints.sphere,
        "concentration": constraints.positive,
    }
    support = constraints.sphere
    has_rsample = False

    def __init__(
        self, loc: Tensor, concentration: Tensor, validate_args: bool | None = None
    ) -> None:
        self.loc, self.concentration = loc, concentration
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], concentration.shape)
        super().__init__(batch_shape, loc.shape[-1:], validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        """(batch) log-density of ``value`` (..., D) unit vectors."""
        if self._validate_args:
            self._validate_sample(value)
        d = int(self.loc.shape[-1])
        cosine = (self.loc * value).sum(-1)
        return log_normaliser(self.concentration, d) + self.concentration * cosine


class VMFMixture(PyroModule):
    """Parameters ``weights`` (K,), ``locs`` (K, D) unit vectors, ``concentration`` (K,) or ()
    when shared by all components.

    Args:
        locs: (K, D) initial mean directions (normalised here); dtype and device the model's.
        concentration: (K,) or () initial concentrations > 0 (() means shared).
        weights: (K,) initial weights, uniform when ``None``.
        learn_weights: False keeps the weights fixed.
    """

    weights: Tensor
    locs: Tensor
    concentration: Tensor

    # constructor keywords the CLI passes (see inference.model_init)
    cli_options = ("learn_weights", "shared_concentration")

    def __init__(
        self,
        locs: Tensor,
        concentration: Tensor,
        weights: Tensor | None = None,
        learn_weights: bool = True,
    ) -> None:
        super().__init__()
        if locs.dim() != 2 or locs.shape[1] < 2:
            raise MixemError(f"locs must have shape (K, D) with D >= 2, got {tuple(locs.shape)}")
        if tuple(concentration.shape) not in ((), (locs.shape[0],)):
            raise MixemError(f"concentration must have shape () or ({locs.shape[0]},)")
        if not bool((concentration > 0).all()):
            raise MixemError("concentration must be > 0")
        init_weights(self, weights, locs, learn_weights)
        unit = locs.detach() / locs.detach().norm(dim=1, keepdim=True)
        self.locs = PyroParam(unit, constraint=constraints.sphere)  # type: ignore[assignment]
        self.concentration = PyroParam(  # type: ignore[assignment]
            concentration.detach().clone(), constraint=constraints.positive
        )

    @classmethod
    def from_centres(cls, centres: Tensor, x: Tensor, **options: Any) -> VMFMixture:
        """Directions at ``centres`` (K, D) (data rows), per-component concentrations (or
        ``shared_concentration=True``) all starting at the ML fit of one vMF to ``x`` (N, D)."""
        validate_unit_rows(x)
        shared = options.pop("shared_concentration", False)
        r = x.mean(0).norm()
        kappa = solve_concentration(r.reshape(()), x.shape[1])
        start = kappa if shared else kappa.expand(centres.shape[0]).clone()
        return cls(centres, start, **options)

    @property
    def n_components(self) -> int:
        return int(self.locs.shape[0])

    @property
    def shared(self) -> bool:
        return self.concentration.dim() == 0

    def validate_data(self, x: Tensor) -> None:
        """Every row of ``x`` (N, D) must have unit norm (within 1e-6)."""
        validate_unit_rows(x)

    def forward(self, x: Tensor) -> None:
        """The generative model; ``x`` is (N, D) unit vectors."""
        kappa = self.concentration
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", mixing_prior(self.weights))
            component_kappa = kappa if self.shared else kappa[z]
            pyro.sample("x", VonMisesFisher(self.locs[z], component_kappa), obs=x)

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """locs = normalised resultants; concentration solves A_D(kappa) = mean resultant length
        (per component, or pooled over components when shared); weights = shares."""
        counts, resultant = stats["counts"], stats["sum_x"]
        length = resultant.norm(dim=1)
        old_locs = self.locs.detach()
        directions = resultant / length.clamp_min(torch.finfo(length.dtype).tiny)[:, None]
        self.locs = keep_where_empty(directions, old_locs, counts * length)
        d = resultant.shape[1]
        if self.shared:
            self.concentration = solve_concentration(length.sum() / counts.sum(), d)
        else:
            kappa = solve_concentration(length / safe_counts(counts), d)
            self.concentration = keep_where_empty(kappa, self.concentration.detach(), counts)
        update_weights(self, counts)


def validate_unit_rows(x: Tensor) -> None:
    """Raise MixemError unless every row of ``x`` (N, D) has unit norm (D >= 2)."""
    if x.shape[1] < 2:
        raise MixemError("vmf data needs at least 2 features (unit vectors in R^D, D >= 2)")
    norms = x.norm(dim=1)
    reject_rows(norms == 0, x, "vmf", "are zero vectors", "remove them (they have no direction)")
    reject_rows(
        (norms - 1).abs() > UNIT_TOL,
        x,
        "vmf",
        "do not have unit norm",
        "divide each row by its Euclidean norm first",
    )
