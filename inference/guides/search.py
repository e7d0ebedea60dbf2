"""The truncated search's steps over candidates (``inference.guides.truncated``).

For each point i, the (m, n) ``candidates`` are the components of its search space S_i; these
evaluate log p(x_i, z_i = c) on them only (by dot products for an exponential family, else one
conditioned trace of the Pyro model), keep the k best distinct ones and summarise q on them.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from inference import native
from inference.enumerate import ASSIGNMENT_SITE as SITE
from inference.enumerate import DATA_PLATE as PLATE
from inference.errors import MixemError
from inference.observed import ModelForm


def candidate_log_joint(
    model: Any, x: Tensor, candidates: Tensor, found: ModelForm | None = None
) -> Tensor:
    """(m, n) log p(x_i, z_i = candidates[j, i]); ``x`` is (n, D), ``candidates`` (m, n) int64.

    For an exponential family (``found``, the model's form) each entry is the dot product
    T(x_i) . eta_c + bias_c + log h(x_i), in C for float32 (no (m, n, F) gathered copy);
    otherwise one trace of the model with ``"z"`` conditioned on the candidates."""
    if found is not None:
        return _candidate_dots(found, x, candidates)
    conditioned = poutine.condition(model, data={SITE: candidates})
    trace = poutine.trace(conditioned).get_trace(x)
    if SITE not in trace.nodes:
        raise MixemError(f"the model has no sample site named {SITE!r}")
    total: Tensor | None = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not any(frame.name == PLATE for frame in site["cond_indep_stack"]):
            raise MixemError(f"site {name!r} is outside pyro.plate({PLATE!r})")
        # Trace.compute_log_prob's terms without its log_prob_sum (a pass more over each term)
        fn: Any = site["fn"]
        log_prob = fn.log_prob(site["value"], *site["args"], **site["kwargs"])
        term = scale_and_mask(log_prob, site["scale"], site["mask"])
        total = term if total is None else total + term
    if not isinstance(total, Tensor) or total.shape != candidates.shape:
        shape = tuple(getattr(total, "shape", ()))
        raise MixemError(f"site log-densities of shape {shape}, not (m, n) = {candidates.shape}")
    return total


def _candidate_dots(found: ModelForm, x: Tensor, candidates: Tensor) -> Tensor:
    form = found.form
    stats = form.statistic(x).contiguous()
    natural, bias = form.natural.detach().contiguous(), found.bias.contiguous()
    operands = (natural, stats, bias)
    if native.available() and all(
        t.dtype == torch.float32 and t.device.type == "cpu" for t in operands
    ):
        values = native.gathered_dots(
            natural, candidates.contiguous(), stats, bias, stats.new_empty(candidates.shape)
        )
    else:
        values = torch.stack([(natural[row] * stats).sum(1) + bias[row] for row in candidates])
    return values.add_(form.base_log_measure(x))


def select_top(values: Tensor, candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best distinct ``candidates`` (m, n) int64 by their ``values`` (m, n): kept (k, n)
    values and int64 ids (k, n), largest first, ties to the lowest id (as ``TopK``)."""
    open_ids = candidates.int()  # int32: torch's int64 min-reduction is ~20x slower
    values = values.clone() if k > 1 else values
    taken = torch.iinfo(torch.int32).max  # the id of a slot already chosen: never the minimum
    kept, ids = [], []
    for j in range(k):  # k passes of O(m n), reductions along m: cheaper than any sort
        best = values.amax(0)
        chosen = torch.where(values == best, open_ids, taken).amin(0)
        kept.append(best)
        ids.append(chosen)
        if j + 1 < k:  # every copy of the chosen id leaves (its value and its id)
            drop = open_ids == chosen
            values.masked_fill_(drop, -torch.inf)
            open_ids.masked_fill_(drop, taken)
    return torch.stack(kept), torch.stack(ids).long()


def summarise(kept: Tensor) -> tuple[Tensor, Tensor, float]:
    """q on the kept entries: ``kept`` (k, n) log-joints, largest first -> weights (k, n),
    point fits E_q[log p(x_i, z_i)] (n,) and the ELBO sum_i (fit_i + H(q_i))."""
    if kept.shape[0] == 1:  # a Delta q: weight 1, no entropy
        return torch.ones_like(kept), kept[0], float(kept.sum())
    # torch.softmax over a dimension of 2 or 3 runs a scalar loop (measured 6x slower)
    weights = (kept - kept[:1]).exp_()
    weights /= weights.sum(0)
    point_fit = torch.where(weights > 0, weights * kept, 0.0).sum(0)
    entropy = -torch.special.xlogy(weights, weights).sum(0)
    return weights, point_fit, float(point_fit.sum() + entropy.sum())
