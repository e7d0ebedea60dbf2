"""The Gaussian mixture with learned weights and full, diagonal, spherical or tied covariances.

    z_i ~ Categorical(weights)
    x_i | z_i = c ~ Normal(locs[c], covariance[c])

``covariances`` has scikit-learn's shape for each ``covariance_type``: full (K, D, D),
diag (K, D), spherical (K,), tied (D, D). As in scikit-learn, ``reg_covar`` is added to the
diagonal of every covariance the M-step computes, so a component on a flat piece of data stays
non-singular; with ``reg_covar=0`` a singular covariance is an error, never a NaN.

Plain Pyro: ``MultivariateNormal(locs[z], scale_tril=...)`` for full and tied covariances,
``Normal(locs[z], scale[z]).to_event(1)`` for diag and spherical. The inference code reads
them as exponential families (``inference.expfam``), so the closed-form M-step receives the
family's sums about a fixed point r (``reference()``, the starting means' mean): the weighted
sums of (x - r) and of its squares or outer products. The scatter about the new mean is then
S2 - n delta delta^T with delta = S1 / n, which keeps its precision because r lies among the
data (E[x x^T] - mu mu^T would cancel catastrophically for data far from the origin). r is
fixed, not the current means, so statistics taken under different parameters still add up
(stepwise mini-batch EM averages them across M-steps).
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints

from inference.errors import MixemError
from models.common import init_weights, keep_where_empty, mixing_prior, safe_counts, update_weights

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


class GMM(PyroModule):
    """Gaussian mixture; parameters ``weights`` (K,), ``locs`` (K, D) and ``covariances``.

    Args:
        locs: (K, D) initial means; their dtype and device are the model's.
        covariances: initial covariances in the shape of ``covariance_type`` (see module doc).
        weights: (K,) initial weights, uniform when ``None``.
        covariance_type: "full", "diag", "spherical" or "tied".
        reg_covar: added to the diagonal of each covariance by the M-step (>= 0).
        learn_weights: False keeps the weights fixed.
    """

    weights: Tensor
    locs: Tensor
    covariances: Tensor
    # constructor keywords the CLI passes (see inference.model_init)
    cli_options = ("covariance_type", "reg_covar", "learn_weights")

    def __init__(
        self,
        locs: Tensor,
        covariances: Tensor,
        weights: Tensor | None = None,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        learn_weights: bool = True,
    ) -> None:
        super().__init__()
        if covariance_type not in COVARIANCE_TYPES:
            raise MixemError(
                f"unknown covariance type {covariance_type!r}; choose one of: "
                + ", ".join(COVARIANCE_TYPES)
            )
        if not reg_covar >= 0:
            raise MixemError(f"reg_covar must be >= 0, got {reg_covar}")
        if locs.dim() != 2:
            raise MixemError(f"locs must have shape (K, D), got {tuple(locs.shape)}")
        self.covariance_type = covariance_type
        self.reg_covar = float(reg_covar)
        K, D = locs.shape
        expected = {"full": (K, D, D), "diag": (K, D), "spherical": (K,), "tied": (D, D)}
        if tuple(covariances.shape) != expected[covariance_type]:
            raise MixemError(
                f"{covariance_type} covariances must have shape {expected[covariance_type]}, "
                f"got {tuple(covariances.shape)}"
            )
        matrix = covariance_type in ("full", "tied")
        _check_covariances(covariances.detach(), matrix)
        init_weights(self, weights, locs, learn_weights)
        self.locs = PyroParam(locs.detach().clone())  # type: ignore[assignment]
        self.register_buffer("origin", locs.detach().mean(0).clone())
        constraint = constraints.positive_definite if matrix else constraints.positive
        self.covariances = PyroParam(  # type: ignore[assignment]
            covariances.detach().clone(), constraint=constraint
        )

    @classmethod
    def from_centres(cls, centres: Tensor, x: Tensor, **options: Any) -> GMM:
        """Means at ``centres`` (K, D), every covariance the data's (N, D) own, uniform weights.

        ``options`` are the constructor's keywords (covariance_type, reg_covar, learn_weights).
        """
        kind = options.get("covariance_type", "full")
        reg = float(options.get("reg_covar", 1e-6))
        K, D = centres.shape
        centred = x - x.mean(0)
        cov = centred.T @ centred / x.shape[0] + reg * torch.eye(D, dtype=x.dtype, device=x.device)
        start = {
            "full": cov.expand(K, D, D),
            "tied": cov,
            "diag": cov.diagonal().expand(K, D),
            "spherical": cov.diagonal().mean().expand(K),
        }.get(kind, cov)
        return cls(centres, start.clone(), **options)

    @classmethod
    def from_labels(cls, labels: Tensor, x: Tensor, k: int, **options: Any) -> GMM:
        """GaussianMixture's ``init_params="kmeans"`` start from hard responsibilities.

        As scikit-learn's ``_initialize`` on one-hot responsibilities: each component's weight
        its share of the (N,) ``labels`` (counts + 10 eps, as scikit-learn), its mean and
        covariance (+ ``reg_covar``) those of its rows of ``x`` (N, D), in the shape of
        ``covariance_type``; a component without rows starts at the data's mean and covariance.
        """
        kind = options.get("covariance_type", "full")
        reg = float(options.get("reg_covar", 1e-6))
        d = x.shape[1]
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        labels = labels.to(x.device).long()
        centre = x.mean(0)
        data_cov = (x - centre).T @ (x - centre) / x.shape[0]
        locs, scatter = centre.expand(k, d).clone(), data_cov.expand(k, d, d).clone()
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        for c in range(k):  # one component's rows at a time: memory N x D, not N x D x D
            rows = x[labels == c]
            if rows.shape[0] > 0:
                locs[c] = rows.mean(0)
                diff = rows - locs[c]
                scatter[c] = diff.T @ diff / rows.shape[0]
        scatter = (scatter + scatter.mT) / 2  # exactly symmetric, as Cholesky expects
        start = {
            "full": scatter + reg * eye,
            "tied": (counts[:, None, None] * scatter).sum(0) / counts.sum() + reg * eye,
            "diag": scatter.diagonal(dim1=1, dim2=2).clamp_min(0) + reg,
            "spherical": scatter.diagonal(dim1=1, dim2=2).clamp_min(0).mean(1) + reg,
        }.get(kind, scatter)
        shares = counts + 10 * torch.finfo(x.dtype).eps
        weights = shares / shares.sum() if options.get("learn_weights", True) else None
        return cls(locs, start.contiguous(), weights, **options)

    @property
    def n_components(self) -> int:
        return int(self.locs.shape[0])

    def component(self, z: Tensor) -> dist.TorchDistribution:
        """The distribution of x given the assignment ``z`` (any shape S): batch shape S."""
        locs, cov = self.locs[z], self.covariances
        if self.covariance_type == "full":
            return dist.MultivariateNormal(locs, scale_tril=torch.linalg.cholesky(cov)[z])
        if self.covariance_type == "tied":
            return dist.MultivariateNormal(locs, scale_tril=torch.linalg.cholesky(cov))
        scale = cov[z].sqrt()
        if self.covariance_type == "spherical":
            scale = scale[..., None].expand(locs.shape)
        return dist.Normal(locs, scale).to_event(1)

    def forward(self, x: Tensor) -> None:
        """The generative model; ``x`` is (N, D)."""
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", mixing_prior(self.weights))
            pyro.sample("x", self.component(z), obs=x)

    def reference(self) -> Tensor:
        """(D,) the fixed point the M-step's sums are taken from (the starting means' mean)."""
        origin: Tensor = self.origin
        return origin

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """Weighted means, covariances (+ reg_covar) and weights from the family's sums.

        A component with no weight keeps its mean and covariance.

        Args:
            stats: ``counts`` (K,), ``shift`` (D,) r, ``sum_dx`` (K, D) = sum_i q_ic (x_i - r)
                and ``sum_dxdx``: (K, D, D) weighted outer products of x_i - r for full and
                tied covariances, (K, D) weighted squares for diag and spherical.
        """
        counts = stats["counts"]
        n = safe_counts(counts)
        shift = stats["shift"]
        old_locs, old_cov = self.locs.detach(), self.covariances.detach()
        delta = stats["sum_dx"] / n[:, None]
        locs = keep_where_empty(shift + delta, old_locs, counts)
        if self.covariance_type in ("full", "tied"):
            scatter = stats["sum_dxdx"] - n[:, None, None] * delta[:, :, None] * delta[:, None, :]
            scatter = (scatter + scatter.mT) / 2  # exactly symmetric, as Cholesky expects
            eye = torch.eye(shift.shape[0], dtype=shift.dtype, device=shift.device)
            if self.covariance_type == "full":
                cov = keep_where_empty(scatter / n[:, None, None], old_cov, counts)
            else:
                cov = scatter.sum(0) / counts.sum()
            cov = cov + self.reg_covar * eye
        else:
            variances = (stats["sum_dxdx"] / n[:, None] - delta**2).clamp_min(0)
            if self.covariance_type == "spherical":
                variances = variances.mean(1)
            cov = keep_where_empty(variances + self.reg_covar, old_cov, counts)
        _check_covariances(cov, self.covariance_type in ("full", "tied"))
        self.locs = locs
        self.covariances = cov
        update_weights(self, counts)


def _check_covariances(cov: Tensor, matrix: bool) -> None:
    """Raise a one-line MixemError unless ``cov`` is positive definite (matrices) or > 0."""
    if matrix:
        batch = cov.reshape(-1, *cov.shape[-2:])
        info = torch.linalg.cholesky_ex(batch).info
        bad = (info > 0) | ~torch.isfinite(batch).all(-1).all(-1)
    else:
        bad = ~(cov > 0).reshape(cov.shape[0], -1).all(1)
    if bool(bad.any()):
        which = int(bad.nonzero()[0])
        raise MixemError(
            f"the covariance of component {which} is singular (e.g. a constant feature or "
            "a component with too few points); use a reg_covar > 0 (--reg-covar 1e-6)"
        )
