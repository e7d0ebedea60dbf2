"""The truncated Dirichlet-process mixture of unit-covariance Gaussians (Blei & Jordan 2006).

    v_k ~ Beta(1, concentration),  k < K - 1;   v_{K-1} = 1 (the truncation)
    pi_k = v_k prod_{j<k} (1 - v_j)
    z_i ~ Categorical(pi)
    x_i | z_i = c ~ Normal(locs[c], I)

The components are the restricted GMM's, so DP-means on ``restricted-gmm`` (``fit
--dp-lambda``) is this model's small-variance limit under the Delta guide, and this model under
the categorical guide is its soft counterpart (scikit-learn's ``BayesianGaussianMixture`` with
``weight_concentration_prior_type="dirichlet_process"``, here with fixed unit covariances).

Mean field over the sticks: q(v_k) = Beta(stick_a_k, stick_b_k) (Blei & Jordan's gamma_k1,
gamma_k2), kept by the model as frozen parameters (no ``requires_grad``: the gradient M-step
leaves them alone; named, so ``params.npz``, ``--init`` and ``--resume`` carry them) and set by
the closed-form coordinate step of ``m_step``. What the E-step needs of q(v) is
E_q[log pi_k] = E[log v_k] + sum_{j<k} E[log(1 - v_j)], so the model's ``"z"`` site is plain
Pyro, ``Categorical(logits=E_q[log pi])``, the same for every point (the fused pass reads it).
Categorical normalises its logits, and KL(q(v) || p(v)) is one term for the whole data set, so
the model declares ``global_elbo_term(n_total)``, which the EM loop adds to every record:

    n_total * logsumexp_c E_q[log pi_c] - KL(q(v) || p(v)).

The recorded ``elbo`` is then the exact mean-field ELBO
E_q[log p(x, z, v | locs)] - E_q[log q(z)] - E_q[log q(v)], and ``log_evidence`` is
sum_i log sum_c exp(E_q[log pi_c] + log N(x_i | locs_c, I)) - KL(q(v) || p(v)): the same bound
with q(z) at its optimum given q(v) and locs (not log p(X | locs), which would integrate v out
exactly). Their difference ``kl_gap`` is KL(q(z) || that optimum): 0 for the categorical guide.
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints

from inference.errors import MixemError


def check_concentration(concentration: Any) -> float:
    """``concentration`` as a float, or a one-line MixemError unless it is finite and > 0."""
    if isinstance(concentration, bool) or not isinstance(concentration, (int, float)):
        raise MixemError(f"the DP concentration must be a number > 0, got {concentration!r}")
    if not 0 < float(concentration) < float("inf"):
        raise MixemError(
            f"the DP concentration must be a finite number > 0 (--dp-concentration 1.0), "
            f"got {concentration!r}"
        )
    return float(concentration)


def stick_update(counts: Tensor, concentration: float) -> tuple[Tensor, Tensor]:
    """Blei & Jordan's coordinate step for q(v) given q(z) (scikit-learn's ``_estimate_weights``):
    a_k = 1 + N_k, b_k = concentration + sum_{j>k} N_j, for the K - 1 sticks.

    Args:
        counts: (K,) N_k = sum_i q_ik.
    Returns:
        (K - 1,) a and (K - 1,) b.
    """
    counts = counts.clamp_min(0)  # sums of q >= 0; a -0.0 or a rounding below 0 is 0
    after = counts.flip(0).cumsum(0).flip(0)[1:]  # (K - 1,) sum_{j>k} N_j
    return 1 + counts[:-1], concentration + after


def expected_log_weights(a: Tensor, b: Tensor) -> Tensor:
    """(K,) E_q[log pi_k] for q(v_k) = Beta(a_k, b_k), a and b (K - 1,); v_{K-1} = 1.

    Sub-normalised: sum_k exp(E_q[log pi_k]) <= 1 (Jensen), the rest is the global term's.
    """
    total = torch.digamma(a + b)
    log_v = torch.digamma(a) - total  # (K - 1,) E[log v_k]
    log_rest = torch.digamma(b) - total  # (K - 1,) E[log(1 - v_k)]
    zero = a.new_zeros(1)
    return torch.cat([log_v, zero]) + torch.cat([zero, log_rest.cumsum(0)])


def stick_kl(a: Tensor, b: Tensor, concentration: float) -> Tensor:
    """() KL(q(v) || p(v)) = sum_k KL(Beta(a_k, b_k) || Beta(1, concentration)); a, b (K - 1,).

    Written out (log B(1, alpha) = -log alpha) rather than through ``kl_divergence``, whose Beta
    refuses K = 1's empty set of sticks.
    """
    alpha, total = concentration, a + b
    log_beta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(total)
    terms = (a - 1) * torch.digamma(a) + (b - alpha) * torch.digamma(b)
    terms = terms + (1 + alpha - total) * torch.digamma(total)
    return (terms - log_beta - math.log(alpha)).sum()  # log B(1, alpha) per stick


class DPMixture(PyroModule):
    """Truncated stick-breaking DP mixture of K unit-covariance Gaussians (see module doc).

    Args:
        locs: (K, D) initial means (K is the truncation); their dtype and device are the model's.
        stick_a, stick_b: (K - 1,) q(v)'s Beta parameters, > 0.
        concentration: the DP's concentration alpha > 0 (p(v_k) = Beta(1, alpha)).
    """

    locs: Tensor
    stick_a: Tensor
    stick_b: Tensor
    # constructor keywords the CLI passes (see inference.model_init)
    cli_options = ("concentration",)
    # an empty component is the prior's left-over mass, not a fault to repair: refilling it
    # with the worst-explained point (as K-means does) moves a point by hand, which can lower
    # the ELBO and, under the Delta guide, refills every spare component at every M-step.
    # Read by the closed-form M-step once it honours the flag (see tests/test_dp_mixture.py).
    refill_empty = False

    def __init__(
        self, locs: Tensor, stick_a: Tensor, stick_b: Tensor, concentration: float = 1.0
    ) -> None:
        super().__init__()
        self.concentration = check_concentration(concentration)
        if locs.dim() != 2:
            raise MixemError(f"locs must have shape (K, D), got {tuple(locs.shape)}")
        sticks = (locs.shape[0] - 1,)
        for name, value in (("stick_a", stick_a), ("stick_b", stick_b)):
            if tuple(value.shape) != sticks or not bool((value > 0).all()):
                raise MixemError(
                    f"{name} must have shape {sticks} with every entry > 0, got shape "
                    f"{tuple(value.shape)}, smallest {float(value.min()) if value.numel() else 0}"
                )
        self.locs = PyroParam(locs.detach().clone())  # type: ignore[assignment]
        # frozen: set by the closed-form step only; a gradient on the normalised z site alone
        # would miss the global term, and so climb another objective than the recorded one
        for name, value in (("stick_a", stick_a), ("stick_b", stick_b)):
            setattr(self, name, PyroParam(value.detach().to(locs).clone(), constraints.positive))
            getattr(self, name + "_unconstrained").requires_grad_(False)
        # fixed for the model's life (as RestrictedGMM's): sums taken at different times add up
        self.register_buffer("origin", locs.detach().mean(0).clone())

    @classmethod
    def from_centres(cls, centres: Tensor, x: Tensor, concentration: float = 1.0) -> DPMixture:
        """Means at ``centres`` (K, D); q(v) the coordinate step for equal counts N/K.

        Equal counts make E_q[pi_k] about 1/K (each stick takes about 1/(K - k) of what is left,
        to O(K / N)), so the first E-step is nearly the nearest-centre split of a uniform
        mixture; the data (``x`` (N, D), only its N is read) then order the sticks. A start
        at the prior (a = 1, b = alpha) would instead hand the first few components most of
        the weight before any point is seen.
        """
        alpha = check_concentration(concentration)
        K = centres.shape[0]
        counts = torch.full((K,), x.shape[0] / K, dtype=centres.dtype, device=centres.device)
        a, b = stick_update(counts, alpha)
        return cls(centres, a, b, alpha)

    @property
    def n_components(self) -> int:
        return int(self.locs.shape[0])

    def expected_log_weights(self) -> Tensor:
        """(K,) E_q[log pi_k] under the current q(v)."""
        return expected_log_weights(self.stick_a, self.stick_b)

    @property
    def weights(self) -> Tensor:
        """(K,) E_q[pi_k] = E[v_k] prod_{j<k} E[1 - v_j] (they sum to 1), detached."""
        a, b = self.stick_a.detach(), self.stick_b.detach()
        one = a.new_ones(1)
        share, rest = torch.cat([a / (a + b), one]), torch.cat([one, (b / (a + b)).cumprod(0)])
        return share * rest

    def n_effective(self, threshold: float = 0.01) -> int:
        """How many components have E_q[pi_k] > ``threshold``."""
        return int((self.weights > threshold).sum())

    def forward(self, x: Tensor) -> None:
        """The generative model with the sticks' mean field folded into the prior of z; ``x`` is
        (N, D)."""
        locs = self.locs
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=self.expected_log_weights()))
            pyro.sample("x", dist.Normal(locs[z], 1.0).to_event(1), obs=x)

    def global_elbo_term(self, n_total: int) -> float:
        """n_total * logsumexp_c E_q[log pi_c] - KL(q(v) || p(v)) (see the module docstring):
        what the normalised z site leaves out of the mean-field ELBO of ``n_total`` points."""
        with torch.no_grad():
            a, b = self.stick_a.double(), self.stick_b.double()
            lse = torch.logsumexp(expected_log_weights(a, b), 0)
            return float(n_total * lse - stick_kl(a, b, self.concentration))

    def reference(self) -> Tensor:
        """(D,) the point the M-step's sums are taken from: the initial locs' mean, fixed."""
        origin: Tensor = self.origin
        return origin

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """q(v) and locs, each the exact maximiser of the ELBO given q(z).

        Given q(z) the ELBO separates: sum_ik q_ik E_q[log pi_k] - KL(q(v) || p(v)) depends on
        q(v) alone, sum_ik q_ik log N(x_i | locs_k, I) on locs alone. So both updates read the
        same counts and neither changes the other's optimum: the order does not matter, and
        with the E-step (q(z) best given both) every step is a coordinate ascent step, which is
        why the trace never decreases. A component with no weight keeps its mean (its mean
        does not enter the ELBO); its stick gets a = 1, the prior's.

        Args:
            stats: the Normal family's sums (``inference.expfam``): ``counts`` (K,),
                ``sum_dx`` (K, D) = sum_i q_ic (x_i - shift) and ``shift`` (D,).
        """
        old = self.locs.detach()
        counts = stats["counts"].to(old.dtype)
        a, b = stick_update(counts, self.concentration)
        tiny = torch.finfo(old.dtype).tiny
        means = stats["shift"] + stats["sum_dx"] / counts[:, None].clamp_min(tiny)
        self.stick_a, self.stick_b = a, b
        self.locs = torch.where(counts[:, None] > 0, means.to(old.dtype), old)
