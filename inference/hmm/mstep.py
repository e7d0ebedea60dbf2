"""The HMM's M-step: the model's closed form from expected statistics, or L-BFGS on
E_q[log p(x, z | theta)] for a model without one (a user's emission).

The statistics are the expected counts of the chain (first states, transitions) and the
emission family's sums of ``inference.expfam``, the same the mixtures' M-steps read:

    stats = {"start": (K,), "trans": (K, K), "counts": (K,), "sum_t": (K, F), ...moments}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from inference.hmm.estep import HMMEStep, _weighted
from inference.hmm.reader import ChainForm, emission_sums, emission_table, read_chain
from inference.mstep_family import lbfgs

MAX_STEPS = 100
CHAIN_PARAMS = ("startprob", "transmat")


def statistics(chain: ChainForm, x: Tensor, est: HMMEStep) -> dict[str, Tensor]:
    """The M-step's sums under q = ``est`` for data ``x`` (N, D) read through ``chain``."""
    stats = emission_sums(chain, x, est.weights)
    return {"start": est.start, "trans": est.pairs, **stats}


def m_step(model: Any, x: Tensor, chain: ChainForm, est: HMMEStep, shift: Tensor | None) -> None:
    """The model's ``m_step(stats)`` when it has one and the emission is in the table, else
    ``gradient_m_step``."""
    closed = getattr(model, "m_step", None)
    if callable(closed) and chain.form is not None:
        closed(statistics(chain, x, est))
    else:
        gradient_m_step(model, x, chain, est, shift)


def chain_closed_form(model: Any, est: HMMEStep) -> list[str]:
    """Set ``startprob``/``transmat`` (where the model names them so, as models.hmm) to the
    normalised expected counts; returns the names set. A row never left keeps its values.

    Closed form rather than L-BFGS: it is the exact maximiser, and a probability that the
    counts make exactly 0 (common in Viterbi training) would be a -inf logit for L-BFGS."""
    done = []
    for name, counts in zip(CHAIN_PARAMS, (est.start, est.pairs), strict=True):
        if not hasattr(model, name):
            continue
        rows = counts.sum(-1, keepdim=True)
        new = counts / rows.clamp_min(torch.finfo(rows.dtype).tiny)
        setattr(model, name, torch.where(rows > 0, new, getattr(model, name).detach()))
        done.append(name)
    return done


def gradient_m_step(
    model: Any, x: Tensor, chain: ChainForm, est: HMMEStep, shift: Tensor | None
) -> None:
    """Maximise E_q[log p(x, z | theta)] over the model's learned parameters.

    The chain's own parameters go by ``chain_closed_form``; every other learned parameter with
    finite values by L-BFGS (strong Wolfe) on the expected log-joint / N, the chain read from
    the model with its graph: for an emission in the table through its form and the family's
    sums (no (N, K) table), otherwise Pyro's log_prob of every row under every state.
    """
    fixed = chain_closed_form(model, est)
    skip = {f"{name}_unconstrained" for name in fixed} | set(fixed)
    params = [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and name not in skip and bool(torch.isfinite(p).all())
    ]
    if not params:
        return
    stats = statistics(chain, x, est) if chain.form is not None else None
    n = float(x.shape[0])
    optimiser = lbfgs(params, MAX_STEPS)

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = -_objective(model, x, est, shift, stats) / n
        loss.backward()
        return loss

    optimiser.step(closure)
    for p in params:
        p.grad = None


def _objective(
    model: Any, x: Tensor, est: HMMEStep, shift: Tensor | None, stats: dict[str, Tensor] | None
) -> Tensor:
    """E_q[log p(x, z | theta)] with the graph to the parameters (see ``gradient_m_step``)."""
    chain = read_chain(model, x, shift, detach=False)
    total = _weighted(est.start, chain.log_start) + _weighted(est.pairs, chain.log_trans)
    if stats is not None and chain.form is not None:
        form = chain.form
        sums = stats["sum_t"].to(form.natural.dtype)
        return total + (form.natural * sums).sum() - (stats["counts"] * form.log_normaliser).sum()
    table = emission_table(chain, x)
    weights = est.weights
    if weights.dim() == 1:
        return total + table.gather(1, weights[:, None]).sum()
    return total + _weighted(weights, table)
