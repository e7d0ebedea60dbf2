"""A plain Pyro mixture read as an exponential family: the model's form under its current
parameters, from one run of the model on two rows with the assignment enumerated.

A mixture whose only sample sites are the assignment ``"z"`` (a prior the same for
every point) and the observation ``"x"`` (a distribution of ``inference.expfam``'s table) has

    log p(x_i, z_i = c) = T(x_i) . eta_c + bias_c + log h(x_i),   bias_c = log pi_c - A(eta_c)

so its whole E-step is one matrix product and its M-step needs only sum_i q_ic T(x_i). The
sites' distributions depend on the parameters, not on the data (the model contract, see
``models``), so two rows show them as well as a million; any other model gets ``None`` and
the generic path (Pyro's own log_prob of each site).

The model runs with gradients on, so the form tells fixed parameters (a Python float, a frozen
tensor: no ``requires_grad``) from learned ones, which decides the statistics the M-step needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from inference.enumerate import isolated_params
from inference.expfam import ExpFamForm, recognise
from inference.responsibilities import Responsibilities
from inference.site_terms import ASSIGNMENT_SITE, DATA_PLATE, OBSERVED_SITE

PROBE_ROWS = 2  # rows traced: two tell a per-point parameter (it differs along the plate)


class ModelForm(NamedTuple):
    """The mixture under its current parameters.

    form: the observed site's exponential-family form (natural (K, F), log_normaliser (K,)).
    log_prior: (K,) log p(z = c), the same for every point.
    """

    form: ExpFamForm
    log_prior: Tensor

    @property
    def bias(self) -> Tensor:
        """(K,) log pi_c - A(eta_c): the per-component constant of the table."""
        return self.log_prior - self.form.log_normaliser

    def split_bias(self) -> tuple[Tensor, Tensor]:
        """``(bias - m, m)``: the per-component constant less the prior's mean m (a scalar),
        which is the same for every entry of a row. A uniform prior (log K for all) then adds
        nothing to the components' terms, so exact ties (points midway between two centres)
        stay exact ties, broken to the lowest index, instead of being broken by the rounding
        of T(x) eta_c + (-A_c - log K)."""
        mean = self.log_prior.mean()
        return (self.log_prior - mean) - self.form.log_normaliser, mean


def model_form(
    model: Any, x: Tensor, shift: Tensor | None = None, detach: bool = True
) -> ModelForm | None:
    """The form of ``model`` on data like ``x`` (N, D), or None for the generic path.

    Args:
        x: (N, D) data; only its first ``PROBE_ROWS`` rows are run through the model.
        shift: (D,) the point location families centre the data on (fixed for a fit, so
            statistics taken under different parameters add up); None: the form chooses.
        detach: False keeps the prior's graph (a gradient M-step differentiates the form).
    """
    probe = x[:PROBE_ROWS]
    if not isinstance(probe, Tensor) or probe.shape[0] == 0:
        return None
    sites = _read_sites(model, probe)
    if sites is None or set(sites) != {ASSIGNMENT_SITE, OBSERVED_SITE}:
        return None
    z_site, x_site = sites[ASSIGNMENT_SITE], sites[OBSERVED_SITE]
    if not all(_in_data_plate(site) and _plain(site) for site in (z_site, x_site)):
        return None
    if not x_site["is_observed"] or z_site["is_observed"]:
        return None
    if x_site["value"] is not probe:  # the data reach the site transformed (e.g. x / |x|)
        return None
    K = int(z_site["value"].numel())
    log_prior = _constant_log_prior(z_site, K, probe.shape[0])
    if log_prior is None:
        return None
    form = recognise(x_site["fn"], K, shift)
    if form is None:
        return None
    return ModelForm(form, (log_prior.detach() if detach else log_prior).to(probe.dtype))


class _SiteReader(Messenger):
    """Runs a model once with ``"z"`` set to its support, (K, 1) along the enumeration dim -2
    (as Pyro's parallel enumeration sets it), and keeps every sample site's message.

    It is what ``poutine.trace(poutine.enum(...))`` records of such a model, for a third of its
    cost (a form is read every iteration, and at every step of a gradient M-step); the generic
    path and its checks use Pyro's own enumeration (``inference.enumerate``)."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: dict[str, Any] = {}

    def _pyro_sample(self, msg: Any) -> None:
        if site_is_subsample(msg):
            return
        if msg["name"] == ASSIGNMENT_SITE and not msg["is_observed"]:
            support = msg["fn"].enumerate_support(expand=False)  # (K, 1) under the plate
            if support.dim() != 2 or support.shape[1] != 1:
                raise _NotAMixtureError
            msg["value"], msg["done"] = support, True
        self.sites[msg["name"]] = msg


class _NotAMixtureError(Exception):
    """The model's sites are not those of a mixture the form can read."""


def _read_sites(model: Any, probe: Tensor) -> dict[str, Any] | None:
    reader = _SiteReader()
    with isolated_params(), torch.enable_grad():
        try:
            with reader:
                model(probe)
        except Exception:
            return None
    return reader.sites


def fit_shift(model: Any) -> Tensor | None:
    """(D,) the model's own ``reference()`` point when it has one, else None (the form's)."""
    reference = getattr(model, "reference", None)
    return reference().detach() if callable(reference) else None


def row_statistics(
    form: ExpFamForm, K: int
) -> Callable[[Tensor, Responsibilities], dict[str, Tensor]]:
    """``(rows (m, D), q (m points)) -> stats``: the statistics of a few rows in the family's
    coordinates, as the M-step needs them to move points into empty components."""

    def stats_of(rows: Tensor, q: Responsibilities) -> dict[str, Tensor]:
        sums = q.weighted_sum(form.statistic(rows), K)
        return {"counts": q.counts(K), "sum_t": sums, **form.moments(sums)}

    return stats_of


def _in_data_plate(site: Any) -> bool:
    return any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"])


def _plain(site: Any) -> bool:
    """No per-point scale or mask on the site (the data could reach the table through them)."""
    scale = site["scale"]
    scalar = isinstance(scale, (int, float)) or (isinstance(scale, Tensor) and scale.dim() == 0)
    return scalar and float(scale) == 1.0 and site["mask"] is None


def _constant_log_prior(site: Any, K: int, n: int) -> Tensor | None:
    """(K,) log p(z = c) when it is the same for every point, else None."""
    log_prob = site["fn"].log_prob(site["value"])  # (K, 1) or (K, n)
    if log_prob.dim() != 2 or log_prob.shape[0] != K:
        return None
    # a prior broadcast along the plate (stride 0: one column seen n times) is constant as is
    varies = log_prob.shape[1] > 1 and log_prob.stride(1) != 0
    if varies and not bool((log_prob == log_prob[:, :1]).all()):
        return None
    return log_prob[:, 0]
