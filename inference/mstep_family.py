"""The M-step of an exponential-family mixture that has no closed form of its own.

For a model whose observed site is in the table of families (``inference.expfam``) the
expected complete-data log-likelihood depends on the data only through the E-step's sums:

    E_q[log p(X, Z | theta)] = sum_c [eta_c . S_c - n_c (A(eta_c) - log pi_c)] + sum_i log h(x_i)

with eta_c, A and pi_c functions of theta, S_c = sum_i q_ic T(x_i) and n_c = sum_i q_ic,

so a gradient M-step on any parametrisation (a user's plain Pyro mixture with learned rates
and logits, say) costs K x F numbers per evaluation, not a pass over the data: L-BFGS on the
model's unconstrained parameters, the form re-read from a trace of two rows each time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from inference.errors import MixemError
from inference.observed import model_form

MAX_STEPS = 100


def lbfgs(
    params: Sequence[Tensor],
    max_steps: int,
    tol_grad: float = 1e-10,
    tol_change: float = 1e-14,
    line_search: str | None = "strong_wolfe",
    lr: float = 1.0,
) -> torch.optim.LBFGS:
    """The M-steps' optimiser: L-BFGS with a strong-Wolfe line search on a deterministic
    objective, so it converges to the optimum rather than hovering around it.

    It stops after ``max_steps`` iterations, when the largest gradient entry is <= ``tol_grad``
    or when the objective or the parameters move by < ``tol_change``; ``line_search`` None:
    fixed steps of ``lr``."""
    return torch.optim.LBFGS(
        params,
        lr=lr,
        max_iter=max_steps,
        line_search_fn=line_search,
        tolerance_grad=tol_grad,
        tolerance_change=tol_change,
    )


def family_objective(
    model: Any, x: Tensor, stats: dict[str, Tensor], shift: Tensor | None
) -> Tensor:
    """sum_c eta_c . S_c + n_c (log pi_c - A_c), differentiable in the model's parameters.

    Args:
        x: (N, D) data (two rows are traced); stats: ``counts`` (K,) and ``sum_t`` (K, F) in
            the coordinates of the form under ``shift`` (D,) (the fit's fixed point, or None).
    """
    found = model_form(model, x, shift, detach=False)
    if found is None:
        raise MixemError("the model's observed site is no longer an exponential family")
    natural, bias = found.form.natural, found.bias
    sum_t = stats["sum_t"].to(natural.dtype)
    return (natural * sum_t).sum() + (stats["counts"].to(bias.dtype) * bias).sum()


def family_m_step(
    model: torch.nn.Module,
    x: Tensor,
    stats: dict[str, Tensor],
    shift: Tensor | None,
    max_steps: int = MAX_STEPS,
) -> float:
    """Maximise ``family_objective`` over the model's learnable parameters by L-BFGS.

    Args:
        x: (N, D) data, only traced; stats: sums over all points and workers (``counts`` (K,),
            ``sum_t`` (K, F)), so every worker takes the same steps.
        shift: (D,) the point the sums' statistics were taken from, or None.
    Returns:
        The objective per point at the end (the ELBO's theta-dependent part).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    n = float(stats["counts"].sum())
    if not params or n <= 0:
        return float("nan")
    optimiser = lbfgs(params, max_steps)

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = -family_objective(model, x, stats, shift) / n
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return float(family_objective(model, x, stats, shift)) / n
