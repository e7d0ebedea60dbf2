"""``MixtureEM``'s fitted attributes under scikit-learn's names and meanings, and ``sample``.

* ``means_``, ``weights_``, ``covariances_``, ``precisions_``, ``precisions_cholesky_``: as
  ``GaussianMixture``'s (same shapes per ``covariance_type``; ``precisions_cholesky_`` upper
  triangular for full and tied, precisions = P P^T) for ``gmm``; ``restricted-gmm`` has
  ``means_`` and uniform ``weights_``; ``poisson`` / ``bernoulli`` have ``means_`` (rates,
  probabilities: each component's mean) and ``weights_``; every model with mixing weights has
  ``weights_``.
* ``inertia_`` (hard guides, models with means): sum of squared Euclidean distances of the rows
  to the mean of their component ``labels_``. For ``restricted-gmm`` + ``delta`` that is
  KMeans's ``inertia_``; for ``gmm`` + ``delta`` the same sum, though its labels are the most
  probable component, not the nearest mean.
* ``lower_bound_``: the final ELBO per sample (GaussianMixture's; for ``categorical`` the mean
  log-likelihood); ``elbo_`` the total; ``lower_bounds_`` the per-sample ELBO of each E-step.
* ``n_iter_``: iterations as scikit-learn counts them for the same run (``sklearn_n_iter``);
  ``n_m_steps_``: the M-steps done (``elbo_trace_`` has ``n_m_steps_ + 1`` entries);
  ``converged_`` as GaussianMixture's: False for a fixed point that scikit-learn would see only
  after ``max_iter`` (``stop_reason_`` still says what stopped the loop).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state
from torch import Tensor

from inference.em import FitResult
from inference.errors import MixemError
from inference.params import get_params

# stops that scikit-learn detects one iteration later: KMeans compares the labels of
# iteration i with those of i - 1 after its M-step i; GaussianMixture compares the lower bound
# of the parameters before its M-step n with that of n - 1 (so its n_iter_ counts one more M-step)
ONE_LATER = ("assignments unchanged", "truncated search unchanged", "ELBO change below tol")


def sklearn_n_iter(result: FitResult, max_iter: int) -> int:
    """``n_iter_`` of KMeans / GaussianMixture for the same run: the M-steps done, plus the
    one scikit-learn does before it sees a fixed point of the labels or of the lower bound
    (never beyond ``max_iter``). A stop by the centres' shift (KMeans's tol) counts the same."""
    n = int(result.n_iter)
    return min(n + 1, max_iter) if result.stop_reason in ONE_LATER else n


def _precisions(cov: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """(precisions, precisions_cholesky) as scikit-learn computes them from covariances."""
    if kind in ("diag", "spherical"):
        return 1.0 / cov, cov.rsqrt()
    lower = torch.linalg.cholesky(cov)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    prec_chol = torch.linalg.solve_triangular(lower, eye, upper=False).mT  # upper triangular
    return prec_chol @ prec_chol.mT, prec_chol


def model_attributes(model: Any, x: Tensor, labels: Tensor, hard: bool) -> dict[str, Any]:
    """The scikit-learn-named attributes of a fitted ``model`` on ``x`` (N, D) (module doc)."""
    from models import GMM, BernoulliMixture, PoissonMixture, RestrictedGMM

    params = get_params(model)
    out: dict[str, Tensor] = {}
    if "weights" in params:
        out["weights_"] = params["weights"]
    means: dict[Any, str] = {
        GMM: "locs",
        RestrictedGMM: "locs",
        PoissonMixture: "rates",
        BernoulliMixture: "probs",
    }
    name = means.get(type(model))
    if name is not None:
        out["means_"] = params[name]
    if isinstance(model, RestrictedGMM):
        k = model.n_components
        out["weights_"] = torch.full((k,), 1.0 / k, dtype=x.dtype, device=x.device)
    if isinstance(model, GMM):
        out["covariances_"] = params["covariances"]
        out["precisions_"], out["precisions_cholesky_"] = _precisions(
            params["covariances"], model.covariance_type
        )
    if hard and isinstance(model, GMM | RestrictedGMM):
        diff = x - params["locs"][labels]
        out["inertia_"] = diff.double().square().sum()
    result: dict[str, Any] = {key: value.detach().cpu().numpy() for key, value in out.items()}
    if "inertia_" in result:
        result["inertia_"] = float(result["inertia_"])
    return result


def store(est: Any, result: FitResult, x: Tensor, hard: bool) -> None:
    """Set the fitted attributes of ``est`` from the kept ``result`` on ``x`` (N, D)."""
    n = x.shape[0]
    est.labels_ = result.labels.cpu().numpy().astype(np.int64)
    est.params_ = {k: v.cpu().numpy() for k, v in get_params(result.model).items()}
    if "locs" in est.params_:
        est.cluster_centers_ = est.params_["locs"]
    for key, value in model_attributes(result.model, x, result.labels, hard).items():
        setattr(est, key, value)
    est.trace_ = list(result.trace)
    est.elbo_trace_ = np.array([r.elbo for r in result.trace])
    est.log_evidence_trace_ = np.array([r.log_evidence for r in result.trace])
    est.elbo_ = float(est.elbo_trace_[-1])
    est.lower_bound_ = est.elbo_ / n
    est.lower_bounds_ = est.elbo_trace_ / n
    est.n_m_steps_ = int(result.n_iter)
    est.n_iter_ = sklearn_n_iter(result, int(est.max_iter))
    # as scikit-learn: a fixed point it would only see after max_iter is not "converged"
    late = result.stop_reason in ONE_LATER and result.n_iter + 1 > int(est.max_iter)
    est.converged_ = bool(result.converged) and not late
    est.stop_reason_ = result.stop_reason


def _draw(model: Any, z: Tensor, d: int, seed: int) -> Tensor:
    """Rows drawn from the model's observed site ``"x"`` given the assignments ``z``."""
    from pyro import poutine

    from inference.enumerate import isolated_params

    like = next(iter(get_params(model).values()))
    placeholder = torch.zeros(z.shape[0], d, dtype=like.dtype, device=like.device)
    devices = [like.device] if like.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), isolated_params():
        torch.manual_seed(seed)
        conditioned = poutine.condition(poutine.uncondition(model), data={"z": z})
        try:
            trace = poutine.trace(conditioned).get_trace(placeholder)
        except NotImplementedError as err:
            raise MixemError(
                f"sample: this model's distribution cannot be sampled ({err})"
            ) from err
    value = trace.nodes["x"]["value"]
    assert isinstance(value, Tensor)
    return value


def sample(est: Any, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(X (n_samples, D), y (n_samples,)) as ``GaussianMixture.sample``: the counts per
    component multinomial in ``weights_`` (uniform without), the rows of each component drawn
    from the fitted model, grouped by component in order; seeded by ``random_state``."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
        raise MixemError(
            f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at least one "
            "sample."
        )
    k = int(est.model_.n_components)
    weights = getattr(est, "weights_", np.full(k, 1.0 / k))
    rng = check_random_state(est.random_state)
    probs = np.asarray(weights, dtype=np.float64)
    counts = rng.multinomial(int(n_samples), probs / probs.sum())
    y = np.repeat(np.arange(k), counts)
    like = next(iter(get_params(est.model_).values()))
    z = torch.as_tensor(y, device=like.device)
    rows = _draw(est.model_, z, int(est.n_features_in_), int(rng.randint(2**31 - 1)))
    return rows.cpu().numpy(), y.astype(np.int64)
