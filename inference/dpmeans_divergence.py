"""DP-means' divergences and steps (``inference.dpmeans`` is the loop).

For an exponential family log p(x | mu) = -D_phi(T(x), mu) + log b_phi(x) (Banerjee et al.
2005), phi = A*, the convex conjugate of the log-normaliser, so with T(x) in the form's shifted
coordinates and eta_c, A_c from ``inference.expfam``

    D(x_i, mu_c) = phi(T(x_i)) - [T(x_i) . eta_c - A(eta_c)] = phi_i - (S_ic - log h_i)

S the pass's table under uniform weights, log h the base measure. ``PHI`` holds phi per
``form.family``; phi_i is computed once per fit, and the hard pass's max_c S_ic gives each
row's smallest divergence, so an E-step is one ``run_pass(mode="hard")`` plus phi.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from inference import fused
from inference.errors import MixemError
from inference.expfam import ExpFamForm
from inference.kernels import run_pass
from inference.mstep import family_update, has_closed_form
from inference.validation import check_data

Factory = Callable[[Tensor], Any]  # centres (K, D) in data coordinates -> a mixture model


def _normal_precision(form: ExpFamForm) -> Tensor:
    """(D,) the fixed shared precision of a Normal form, read from its base measure:
    log h(r + e_d) - log h(r) = -prec_d / 2 (the quadratic block is folded into h)."""
    r = form.shift
    assert r is not None, "a normal form has a shift"
    probe = torch.cat([r[None], r + torch.eye(r.numel(), dtype=r.dtype, device=r.device)])
    h = form.base_log_measure(probe)
    step = (probe[1:] - r).diagonal()
    return -2 * (h[1:] - h[0]) / step.square()


def _phi_normal(t: Tensor, form: ExpFamForm) -> Tensor:
    """A(eta) = sum eta^2 / (2 prec) + log sigma -> phi(y) = sum prec y^2 / 2 + log(prec) / 2."""
    if form.shift is None or form.natural.shape[1] != form.shift.numel():
        raise MixemError(
            "DP-means on a Normal mixture needs a fixed scale shared by all components "
            "(e.g. restricted-gmm); its divergence is then a scaled squared distance"
        )
    precision = _normal_precision(form)
    return 0.5 * (t.square() @ precision) + 0.5 * precision.log().sum()


def _phi_poisson(t: Tensor, form: ExpFamForm) -> Tensor:
    """A(eta) = sum exp(eta) -> phi(x) = sum x log x - x (0 log 0 = 0)."""
    return (torch.xlogy(t, t) - t).sum(1)


def _phi_bernoulli(t: Tensor, form: ExpFamForm) -> Tensor:
    """A(eta) = sum softplus(eta) -> phi(x) = sum x log x + (1 - x) log(1 - x) (0 for 0/1)."""
    return (torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t)).sum(1)


# form.family -> phi(T (n, F) in the form's coordinates, form) -> (n,)
PHI: dict[str, Callable[[Tensor, ExpFamForm], Tensor]] = {
    "normal": _phi_normal,
    "poisson": _phi_poisson,
    "bernoulli": _phi_bernoulli,
}


def named_factory(name: str) -> Factory:
    """The DP-means constructor of a shipped model: its parameters from centres (K, D), fixed
    uniform weights (the small-variance limit has none)."""
    from models import BernoulliMixture, PoissonMixture, RestrictedGMM
    from models.bernoulli import PROB_EPS
    from models.poisson import MIN_RATE

    factories: dict[str, Factory] = {
        "restricted-gmm": RestrictedGMM,
        "poisson": lambda c: PoissonMixture(c.clamp_min(MIN_RATE), learn_weights=False),
        "bernoulli": lambda c: BernoulliMixture(
            c.clamp(PROB_EPS, 1 - PROB_EPS), learn_weights=False
        ),
    }
    factories["normal"] = factories["restricted-gmm"]
    if name not in factories:
        raise MixemError(
            f"DP-means takes --model restricted-gmm, poisson or bernoulli, got {name!r}"
        )
    return factories[name]


class Prepared(NamedTuple):
    data: fused.FusedData
    phi: Tensor  # (N,) phi(T(x_i))
    factory: Factory
    mean: Tensor  # (D,) the data's mean, the start


class Assigned(NamedTuple):
    labels: Tensor  # (N,) int64
    divergence: Tensor  # (N,) min_c D(x_i, mu_c)
    counts: Tensor  # (K,) float64
    sum_t: Tensor  # (K, F) float64
    form: ExpFamForm
    elbo: float
    log_evidence: float


def as_factory(model: str | Factory) -> Factory:
    return named_factory(model) if isinstance(model, str) else model


def prepare(model: str | Factory, x: Tensor, chunk_size: int = 1 << 14) -> Prepared:
    check_data(x, 1)
    factory = as_factory(model)
    mean = x.mean(0)
    first = factory(mean[None])
    validate = getattr(first, "validate_data", None)
    if callable(validate):
        validate(x)
    data = fused.prepare(first, x, chunk_size)
    if data is None or data.family not in PHI:
        family = "outside inference.expfam's table" if data is None else repr(data.family)
        raise MixemError(
            f"DP-means needs a normal (fixed shared scale), poisson or bernoulli mixture; "
            f"this model's observed family is {family}"
        )
    form = fused.current_form(first, data).form
    phi = torch.cat(
        [
            PHI[data.family](rows_t(data, s, s + chunk_size), form)
            for s in range(0, x.shape[0], chunk_size)
        ]
    )
    return Prepared(data, phi, factory, mean)


def rows_t(data: fused.FusedData, start: int, stop: int) -> Tensor:
    """T(x) of rows start:stop in the form's coordinates (the kernel's shift applied)."""
    t = data.t[start:stop]
    return t if data.kernel_shift is None else t - data.kernel_shift


def assign(model: Any, prep: Prepared) -> Assigned:
    """The E-step: one hard pass; the divergence of each row to its nearest component."""
    found = fused.current_form(model, prep.data)
    if not bool((found.log_prior == found.log_prior[0]).all()):
        raise MixemError("DP-means needs a model with fixed uniform weights")
    bias, constant = found.split_bias()
    data = prep.data
    with torch.no_grad():
        result = run_pass(
            data.t,
            found.form.natural.detach(),
            bias.detach(),
            data.base,
            data.kernel_shift,
            mode="hard",
        )
        divergence = (prep.phi - (result.point_fit - data.base)).clamp_min(0)
    shared = float(constant) * data.t.shape[0]
    return Assigned(
        result.labels,
        divergence,
        result.counts,
        result.sum_t,
        found.form,
        result.elbo + shared,
        result.log_evidence + shared,
    )


def m_step(prep: Prepared, form: ExpFamForm, counts: Tensor, sum_t: Tensor) -> Any:
    """A model of K = len(counts) components (all non-empty) from the family's sums."""
    K = int(counts.shape[0])
    model = prep.factory(prep.mean.expand(K, -1).clone())
    dtype = prep.data.x.dtype
    stats = {"counts": counts.to(dtype), "sum_t": sum_t.to(dtype), **form.moments(sum_t.to(dtype))}
    update = model.m_step if has_closed_form(model) else family_update(model, prep.data.x)
    update(stats)
    return model
