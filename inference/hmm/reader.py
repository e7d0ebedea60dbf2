"""An HMM read from its plain Pyro model: the chain's log-potentials under the current parameters.

The model runs once, under Pyro's parallel enumeration, on a probe of two rows taken as one
sequence of two steps (the model contract, ``models.hmm``: the sites' distributions depend on
the parameters, not on the data, and are the same at every step). The trace then holds

* ``z_0``'s distribution, enumerated at dim -2: log startprob = its log_prob of 0..K-1;
* ``z_1``'s distribution, batch (K, 1) over z_0, enumerated at dim -3: the transition matrix;
* ``x_0``'s distribution, batch (K, 1) over z_0: ``inference.expfam.recognise`` gives its
  exponential-family form, so the (N, K) emission table is T(x) @ eta^T - A(eta) + log h(x),
  one matrix product; a distribution not in the table keeps Pyro's own log_prob of every row
  under every state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from pyro import poutine
from pyro.infer import config_enumerate
from torch import Tensor

from inference.enumerate import isolated_params
from inference.errors import MixemError
from inference.expfam import ExpFamForm, recognise
from inference.hmm.messages import Chain

TABLE_BLOCK = 1 << 16  # rows of the emission table computed at once (bounds T(x)'s copy)


class ChainForm(NamedTuple):
    """The model under its current parameters.

    log_start: (K,). log_trans: (K, K), row = previous state. form: the emission's
    exponential-family form, or None. emission: x_0's distribution (batch (K, 1)), for the
    generic table.
    """

    log_start: Tensor
    log_trans: Tensor
    form: ExpFamForm | None
    emission: Any

    @property
    def n_components(self) -> int:
        return int(self.log_start.shape[0])


def model_shift(model: Any) -> Tensor | None:
    """(D,) the model's ``reference()`` (the point location families' sums are taken about)."""
    reference = getattr(model, "reference", None)
    return reference().detach() if callable(reference) else None


def read_chain(model: Any, x: Tensor, shift: Tensor | None, detach: bool = True) -> ChainForm:
    """The chain of ``model`` on data like ``x`` (N, D) (only two rows are run).

    Args:
        shift: (D,) see ``recognise``; fixed for a fit so that statistics add up.
        detach: False keeps the graph to the parameters (the gradient M-step).
    """
    probe = x[:2] if x.shape[0] >= 2 else x[[0, 0]]
    trace = _trace(model, probe)
    sites = {name: trace.nodes.get(name) for name in ("z_0", "z_1", "x_0")}
    missing = [name for name, site in sites.items() if site is None]
    if missing:
        raise MixemError(
            f"the model has no site {', '.join(missing)}; an HMM samples z_0, z_1, ... and "
            "observes x_0, x_1, ... (see models.hmm)"
        )
    z0, z1, x0 = sites["z_0"], sites["z_1"], sites["x_0"]
    K = int(z0["value"].numel())
    log_start = z0["fn"].log_prob(z0["value"]).reshape(K)
    log_trans = z1["fn"].log_prob(z1["value"])  # (K_1, K_0, 1): z_1 at dim -3, z_0 at -2
    if log_trans.numel() != K * K:
        raise MixemError("z_1's distribution must depend on z_0 alone (a (K, K) transition)")
    log_trans = log_trans.reshape(K, K).T
    emission = x0["fn"]
    form = recognise(emission, K, shift)
    if detach:
        log_start, log_trans = log_start.detach(), log_trans.detach()
        form = _detached(form)
    return ChainForm(log_start, log_trans, form, emission)


def _trace(model: Any, probe: Tensor) -> Any:
    enumerated = poutine.enum(config_enumerate(model, "parallel"), first_available_dim=-2)
    with isolated_params(), torch.enable_grad():  # gradients on: learned vs fixed parameters
        return poutine.trace(enumerated).get_trace(probe, torch.tensor([2]))


def _detached(form: ExpFamForm | None) -> ExpFamForm | None:
    if form is None:
        return None
    return form._replace(natural=form.natural.detach(), log_normaliser=form.log_normaliser.detach())


def chain_of(chain: ChainForm, x: Tensor) -> Chain:
    """The chain's log-potentials with the (N, K) emission table of ``x`` (N, D)."""
    return Chain(chain.log_start, chain.log_trans, emission_table(chain, x))


def emission_table(chain: ChainForm, x: Tensor) -> Tensor:
    """(N, K) log p(x_t | z_t = k), a block of rows at a time."""
    parts = [_table_block(chain, x[lo : lo + TABLE_BLOCK]) for lo in range(0, x.shape[0],
             TABLE_BLOCK)]  # fmt: skip
    return torch.cat(parts)


def _table_block(chain: ChainForm, rows: Tensor) -> Tensor:
    form = chain.form
    if form is not None:
        bias = -form.log_normaliser
        return (
            torch.addmm(bias, form.statistic(rows), form.natural.T)
            + form.base_log_measure(rows)[:, None]
        )
    # the generic table: Pyro's log_prob of every row (batch (n,)) under every state (K, 1)
    table = chain.emission.log_prob(rows)  # (K, n)
    return table.T


def emission_sums(chain: ChainForm, x: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """The emission family's M-step sums: ``counts`` (K,) and the form's named moments of
    sum_t w_tk T(x_t) (``shift`` included for location families).

    Args:
        weights: (N, K) q(z_t = k), or (N,) int64 states (a path: one-hot weights).
    """
    form = chain.form
    if form is None:
        raise MixemError("the emission is not an exponential family of inference.expfam")
    K = chain.n_components
    total = None
    for lo in range(0, x.shape[0], TABLE_BLOCK):
        stat = form.statistic(x[lo : lo + TABLE_BLOCK])
        w = weights[lo : lo + TABLE_BLOCK]
        if w.dim() == 1:
            part = stat.new_zeros(K, stat.shape[1]).index_add_(0, w, stat)
        else:
            part = w.T.to(stat) @ stat
        total = part if total is None else total + part
    assert total is not None
    counts = _counts(weights, K, x.dtype)
    return {"counts": counts, "sum_t": total, **form.moments(total)}


def _counts(weights: Tensor, K: int, dtype: torch.dtype) -> Tensor:
    if weights.dim() == 1:
        return torch.bincount(weights, minlength=K).to(dtype)
    return weights.sum(0).to(dtype)
