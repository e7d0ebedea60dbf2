"""The emission families of ``models.hmm``: what each state emits, and its closed-form M-step.

Each family names its parameters as the mixtures do (``locs``/``covariances``, ``probs``,
``rates``), gives the Pyro distribution of x_t given z_t, and updates its parameters from the
sums of ``inference.expfam``'s table (``counts`` (K,) and the family's moments). The updates
are hmmlearn's ``_do_mstep`` with hmmlearn's default priors: for the Gaussian, ``covars_prior``
(1e-2) is added to every entry of each covariance's numerator and the denominator is
``max(covars_weight - 1, 0) + n`` (diag, floored at 1e-5) or ``max(covars_weight - D, 0) + n``
(full); Bernoulli, Poisson and categorical are the weighted frequencies and means (hmmlearn's
priors of 1 and 0 add no pseudo-counts). A state with no weight keeps its parameters (hmmlearn
would divide 0 by 0).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import constraints
from torch.nn.functional import one_hot

from inference.errors import MixemError

COVARIANCE_TYPES = ("diag", "full")


def _keep_empty(new: Tensor, old: Tensor, counts: Tensor) -> Tensor:
    """``new`` (K, ...) where a state has weight, ``old`` where ``counts`` (K,) is 0."""
    has = (counts > 0).reshape(-1, *([1] * (new.dim() - 1)))
    return torch.where(has, new, old)


def _per_state(sums: Tensor, counts: Tensor) -> Tensor:
    """``sums`` (K, ...) / ``counts`` (K,), 0/0 avoided (those rows are kept by the caller)."""
    safe = counts.clamp_min(torch.finfo(counts.dtype).tiny)
    return sums / safe.reshape(-1, *([1] * (sums.dim() - 1)))


def _check_shape(name: str, value: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(value.shape) != shape:
        raise MixemError(f"{name} must have shape {shape}, got {tuple(value.shape)}")


class Gaussian:
    """x_t | z_t = k ~ Normal(locs[k], covariances[k]); diag (K, D) or full (K, D, D)."""

    names = ("locs", "covariances")
    letters: ClassVar[dict[str, str]] = {"locs": "m", "covariances": "c"}

    def __init__(
        self, covariance_type: str = "diag", covars_prior: float = 1e-2, covars_weight: float = 1.0
    ) -> None:
        if covariance_type not in COVARIANCE_TYPES:
            raise MixemError(
                f"unknown covariance type {covariance_type!r}; choose one of: diag, full"
            )
        self.covariance_type = covariance_type
        self.covars_prior = float(covars_prior)
        self.covars_weight = float(covars_weight)

    def constraints(self) -> dict[str, Any]:
        full = self.covariance_type == "full"
        cov = constraints.positive_definite if full else constraints.positive
        return {"locs": constraints.real, "covariances": cov}

    def check(self, params: dict[str, Tensor], K: int) -> None:
        locs = params["locs"]
        if locs.dim() != 2 or locs.shape[0] != K:
            raise MixemError(f"locs must have shape ({K}, D), got {tuple(locs.shape)}")
        D = locs.shape[1]
        shape = (K, D, D) if self.covariance_type == "full" else (K, D)
        _check_shape(f"{self.covariance_type} covariances", params["covariances"], shape)

    def distribution(self, params: dict[str, Tensor], z: Tensor) -> dist.TorchDistribution:
        """The distribution of x_t given ``z`` (any shape S): batch shape S, event (D,)."""
        locs, cov = params["locs"], params["covariances"]
        if self.covariance_type == "full":
            return dist.MultivariateNormal(locs[z], scale_tril=torch.linalg.cholesky(cov)[z])
        return dist.Normal(locs[z], cov[z].sqrt()).to_event(1)

    def m_step(self, params: dict[str, Tensor], stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Means and covariances from ``counts`` (K,), ``shift`` r (D,), ``sum_dx`` (K, D) and
        ``sum_dxdx`` ((K, D) squares or (K, D, D) outer products of x - r).

        The scatter about the new mean is S2 - n d d^T with d = S1 / n (sums about r, which lies
        among the data, keep the precision that E[x^2] - mu^2 would cancel away)."""
        n = stats["counts"]
        delta = _per_state(stats["sum_dx"], n)
        locs = stats["shift"] + delta
        if self.covariance_type == "full":
            D = delta.shape[1]
            scatter = stats["sum_dxdx"] - n[:, None, None] * delta[:, :, None] * delta[:, None, :]
            denom = max(self.covars_weight - D, 0.0) + n[:, None, None]
            cov = (self.covars_prior + scatter) / denom
            cov = 0.5 * (cov + cov.mT)  # exactly symmetric, so the Cholesky factor exists
        else:
            scatter = stats["sum_dxdx"] - n[:, None] * delta * delta
            denom = (max(self.covars_weight - 1, 0.0) + n[:, None]).clamp_min(1e-5)
            cov = (self.covars_prior + scatter) / denom
        return {
            "locs": _keep_empty(locs, params["locs"], n),
            "covariances": _keep_empty(cov, params["covariances"], n),
        }

    def initial(self, centres: Tensor, x: Tensor, min_covar: float = 1e-3) -> dict[str, Tensor]:
        """Means at ``centres`` (K, D); every covariance the data's (N, D) own (ddof 1, as
        numpy's ``cov``) + ``min_covar`` I, hmmlearn's start."""
        K, D = centres.shape
        centred = x - x.mean(0)
        cov = centred.T @ centred / max(x.shape[0] - 1, 1)
        cov = cov + min_covar * torch.eye(D, dtype=x.dtype, device=x.device)
        if self.covariance_type == "full":
            start = cov.expand(K, D, D)
        else:
            start = cov.diagonal().expand(K, D)
        return {"locs": centres.clone(), "covariances": start.clone()}

    def validate_data(self, x: Tensor) -> None:
        """Any finite reals (checked by the caller)."""


class Bernoulli:
    """x_td | z_t = k ~ Bernoulli(probs[k, d]), independently over the D features."""

    names = ("probs",)
    letters: ClassVar[dict[str, str]] = {"probs": "e"}

    def constraints(self) -> dict[str, Any]:
        return {"probs": constraints.unit_interval}

    def check(self, params: dict[str, Tensor], K: int) -> None:
        probs = params["probs"]
        if probs.dim() != 2 or probs.shape[0] != K:
            raise MixemError(f"probs must have shape ({K}, D), got {tuple(probs.shape)}")

    def distribution(self, params: dict[str, Tensor], z: Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(probs=params["probs"][z]).to_event(1)

    def m_step(self, params: dict[str, Tensor], stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """probs = weighted mean of x per state (``sum_x`` (K, D) / ``counts`` (K,))."""
        n = stats["counts"]
        return {"probs": _keep_empty(_per_state(stats["sum_x"], n), params["probs"], n)}

    def initial(self, centres: Tensor, x: Tensor, min_covar: float = 1e-3) -> dict[str, Tensor]:
        """Halfway between the centre rows (K, D) and 1/2: never 0 or 1 at the start."""
        return {"probs": 0.5 * centres + 0.25}

    def validate_data(self, x: Tensor) -> None:
        _reject(~((x == 0) | (x == 1)), "bernoulli", "values other than 0 and 1")


class Poisson:
    """x_td | z_t = k ~ Poisson(rates[k, d]), independently over the D features."""

    names = ("rates",)
    letters: ClassVar[dict[str, str]] = {"rates": "l"}

    def constraints(self) -> dict[str, Any]:
        return {"rates": constraints.positive}

    def check(self, params: dict[str, Tensor], K: int) -> None:
        rates = params["rates"]
        if rates.dim() != 2 or rates.shape[0] != K:
            raise MixemError(f"rates must have shape ({K}, D), got {tuple(rates.shape)}")

    def distribution(self, params: dict[str, Tensor], z: Tensor) -> dist.TorchDistribution:
        return dist.Poisson(params["rates"][z]).to_event(1)

    def m_step(self, params: dict[str, Tensor], stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """rates = weighted mean count per state (hmmlearn's with its priors of 0)."""
        n = stats["counts"]
        return {"rates": _keep_empty(_per_state(stats["sum_x"], n), params["rates"], n)}

    def initial(self, centres: Tensor, x: Tensor, min_covar: float = 1e-3) -> dict[str, Tensor]:
        """Halfway between the centre rows and the data's mean, at least 1e-3."""
        return {"rates": (0.5 * (centres + x.mean(0))).clamp_min(1e-3)}

    def validate_data(self, x: Tensor) -> None:
        _reject(x < 0, "poisson", "negative values")
        _reject(x != torch.round(x), "poisson", "non-integer values")


class Categorical:
    """x_td | z_t = k ~ Categorical(probs[k, d, :]) for integer codes 0..C-1, per feature."""

    names = ("probs",)
    letters: ClassVar[dict[str, str]] = {"probs": "e"}

    def __init__(self, n_categories: int | None = None) -> None:
        self.n_categories = n_categories  # C; read from probs when the model is built

    def constraints(self) -> dict[str, Any]:
        return {"probs": constraints.simplex}

    def check(self, params: dict[str, Tensor], K: int) -> None:
        probs = params["probs"]
        if probs.dim() != 3 or probs.shape[0] != K:
            raise MixemError(f"probs must have shape ({K}, D, C), got {tuple(probs.shape)}")
        self.n_categories = int(probs.shape[2])

    def distribution(self, params: dict[str, Tensor], z: Tensor) -> dist.TorchDistribution:
        return dist.Categorical(probs=params["probs"][z]).to_event(1)

    def m_step(self, params: dict[str, Tensor], stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """probs = weighted frequencies (``sum_onehot`` (K, D, C) / ``counts``), hmmlearn's."""
        n = stats["counts"]
        return {"probs": _keep_empty(_per_state(stats["sum_onehot"], n), params["probs"], n)}

    def initial(self, centres: Tensor, x: Tensor, min_covar: float = 1e-3) -> dict[str, Tensor]:
        """Half the one-hot codes of the centre rows (K, D), half the data's frequencies."""
        C = self.n_categories if self.n_categories is not None else int(x.max()) + 1
        freq = one_hot(x.long(), C).to(x.dtype).mean(0)  # (D, C)
        return {"probs": 0.5 * one_hot(centres.long(), C).to(x.dtype) + 0.5 * freq}

    def validate_data(self, x: Tensor) -> None:
        _reject(x != torch.round(x), "categorical", "non-integer codes")
        C = self.n_categories
        if C is not None:
            _reject((x < 0) | (x >= C), "categorical", f"codes outside 0..{C - 1}")


def _reject(bad: Tensor, family: str, what: str) -> None:
    """One-line MixemError naming the first row of ``bad`` (N, D) with a True entry."""
    rows = bad.reshape(bad.shape[0], -1).any(1)
    if bool(rows.any()):
        first = int(rows.nonzero()[0])
        raise MixemError(f"{family} data: {int(rows.sum())} rows have {what}, first at row {first}")


EMISSIONS: dict[str, type] = {
    "gaussian": Gaussian,
    "bernoulli": Bernoulli,
    "poisson": Poisson,
    "categorical": Categorical,
}
