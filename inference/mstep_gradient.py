"""The gradient M-step: L-BFGS on E_q[log p(X, Z | theta)] with q held, warm-started, guarded.

With q fixed the ELBO's entropy does not depend on theta, so the M-step maximises the expected
complete-data log-likelihood

    f(theta) = (1 / N) sum_i sum_c q_ic log p(x_i, z_i = c | theta),

which is evaluated here without Pyro's ELBO machinery: a one-hot q (delta, sampled) from a trace
of the model with ``"z"`` conditioned on the labels (one log-density per point, not K), any
other q from the enumerated trace's (n, K) table (``inference.site_terms``), one trace per chunk
length, the gradient taken chunk by chunk (memory bounded as in the E-step). ``fit`` keeps one
optimiser per fit (``GradientMStep``): each M-step continues from the previous parameters and
the previous L-BFGS curvature pairs, stops when the objective or the gradient stops moving
(``Gradient.tol``) or after ``max_steps``, and a step that would lower f is rejected (the
parameters are put back bit for bit), so the ELBO never decreases across an M-step.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch
from torch import Tensor

from inference.distributed import LOCAL, Reducer
from inference.enumerate import DEFAULT_CHUNK_SIZE, isolated_params
from inference.errors import MixemError
from inference.mstep_family import lbfgs
from inference.mstep_objective import Objective
from inference.responsibilities import Responsibilities
from inference.state import EStep

LINE_SEARCHES = ("strong_wolfe", "none")


class Gradient(NamedTuple):
    """Settings of the gradient M-step: ``fit(..., m_step=Gradient(max_steps=20))``.

    Attributes:
        max_steps: L-BFGS iterations per M-step at most (each one or a few evaluations).
        tol: stop once the largest entry of the per-point objective's gradient is at most
            this (and once neither the objective nor a parameter moves any more: changes below
            eps**2 of the dtype). The default leaves the parameters within about 1e-7 of the
            exact M-step on the Student-t mixture of ``benchmarks/gradient_mstep.py``; a
            looser one (the objective's change) would stop early in its flat directions.
        line_search: "strong_wolfe" (the default) or "none" (fixed steps of ``lr``).
        lr: L-BFGS's step scale (1.0: the quasi-Newton step).
        warm_start: keep the L-BFGS curvature pairs from one M-step to the next in a fit.

    Called as ``Gradient(...)(model, x, estep)`` it is one cold M-step (an ``MStep``); ``fit``
    binds it to a ``GradientMStep`` that warm-starts across iterations.
    """

    max_steps: int = 100
    tol: float = 1e-10
    line_search: str = "strong_wolfe"
    lr: float = 1.0
    warm_start: bool = True

    def checked(self) -> Gradient:
        """These settings, or a one-line ``MixemError`` saying which one is wrong."""
        if not _is_int(self.max_steps) or self.max_steps < 1:
            raise MixemError(
                f"the gradient M-step's max_steps must be an integer >= 1, got {self.max_steps!r}"
            )
        if not _is_real(self.tol) or not 0 <= float(self.tol) < math.inf:
            raise MixemError(
                f"the gradient M-step's tol must be a finite number >= 0, got {self.tol!r}"
            )
        if self.line_search not in LINE_SEARCHES:
            raise MixemError(
                f"the gradient M-step's line_search must be one of {', '.join(LINE_SEARCHES)}, "
                f"got {self.line_search!r}"
            )
        if not _is_real(self.lr) or not 0 < float(self.lr) < math.inf:
            raise MixemError(
                f"the gradient M-step's lr must be a finite number > 0, got {self.lr!r}"
            )
        if not isinstance(self.warm_start, bool):
            raise MixemError(
                f"the gradient M-step's warm_start must be True or False, got {self.warm_start!r}"
            )
        return self

    def __call__(self, model: Any, x: Tensor, est: EStep) -> int:
        return GradientMStep(self)(model, x, est)


def gradient_settings(options: Any) -> Gradient:
    """``Gradient(**options)`` checked: ``options`` a dict of its fields (``MixtureEM``'s
    ``m_step_options``), a ``Gradient``, or None (the defaults)."""
    if options is None:
        return Gradient()
    if isinstance(options, Gradient):
        return options.checked()
    if not isinstance(options, dict):
        raise MixemError(
            f"m_step_options must be a dict of {', '.join(Gradient._fields)}, "
            f"got {type(options).__name__}"
        )
    unknown = sorted(set(options) - set(Gradient._fields))
    if unknown:
        raise MixemError(
            f"unknown m_step_options {', '.join(map(str, unknown))}; "
            f"the gradient M-step takes: {', '.join(Gradient._fields)}"
        )
    return Gradient(**options).checked()


class StepReport(NamedTuple):
    """What one gradient M-step did: L-BFGS ``evaluations`` of f (with its gradient), the
    per-point objective ``before`` and ``after``, and whether the step was ``accepted``."""

    evaluations: int
    before: float
    after: float
    accepted: bool


class GradientMStep:
    """The gradient M-step of one fit: an ``MStep`` holding its L-BFGS between iterations.

    Attributes:
        reports: one ``StepReport`` per M-step taken.
    """

    def __init__(
        self,
        settings: Gradient | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        reducer: Reducer = LOCAL,
    ) -> None:
        self.settings = (settings or Gradient()).checked()
        self.chunk_size, self.reducer = chunk_size, reducer
        self.reports: list[StepReport] = []
        self._optimiser: torch.optim.LBFGS | None = None
        self._params: list[Tensor] = []

    def __call__(self, model: Any, x: Tensor, est: EStep) -> int:
        self.step(model, x, est.q)
        return 0  # no component refilled

    def step(self, model: Any, x: Tensor, q: Responsibilities) -> StepReport | None:
        """Raise f over the model's learnable parameters, in place; None when it has none."""
        if not isinstance(x, Tensor):
            raise MixemError(
                "the gradient M-step needs the data in memory, not streamed from a file"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return None
        n = int(self.reducer.sum(torch.tensor([x.shape[0]], device=x.device))[0])
        objective = Objective(model, x, q, self.chunk_size, self.reducer, n)
        optimiser = self._optimiser_for(params)
        kept = [p.detach().clone() for p in params]
        evaluations = 0
        last: tuple[float, list[Tensor]] = (math.nan, [])

        def closure() -> Tensor:
            nonlocal evaluations, last
            evaluations += 1
            optimiser.zero_grad()
            # at the parameters the step starts from an error is the model's; later, a trial
            value = (
                _trial(objective, backward=True) if evaluations > 1 else objective.evaluate(True)
            )
            self._sum_gradients(params)
            last = (value, [p.detach().clone() for p in params])
            return torch.tensor(-value, dtype=torch.float64)

        with isolated_params():
            before = -float(optimiser.step(closure))
            # L-BFGS ends where it last evaluated f but after a backtracking line search or a
            # fixed step that it did not evaluate: then f is taken once more, without a gradient
            after, at = last
            if not at or not all(torch.equal(p, v) for p, v in zip(params, at, strict=True)):
                with torch.no_grad():
                    after = _trial(objective, backward=False)
            accepted = math.isfinite(after) and after >= before
            if not accepted:  # put back the parameters the step started from, bit for bit
                with torch.no_grad():
                    for p, value in zip(params, kept, strict=True):
                        p.copy_(value)
                self._optimiser = None  # its curvature pairs led there: start afresh
        report = StepReport(evaluations, before, after if accepted else before, accepted)
        self.reports.append(report)
        return report

    def _optimiser_for(self, params: list[Tensor]) -> torch.optim.LBFGS:
        """The fit's L-BFGS, its curvature pairs kept (warm start) when the parameters are the
        same tensors; the pair that would mix the previous objective's gradient with this
        one's is not taken (``d`` zero: no step since)."""
        s = self.settings
        same = len(params) == len(self._params) and all(
            a is b for a, b in zip(params, self._params, strict=False)
        )
        if self._optimiser is None or not same or not s.warm_start:
            line_search = None if s.line_search == "none" else s.line_search
            change = torch.finfo(params[0].dtype).eps ** 2  # only "nothing moves any more"
            self._optimiser = lbfgs(params, s.max_steps, s.tol, change, line_search, s.lr)
            self._params = params
            return self._optimiser
        state = self._optimiser.state[params[0]]
        if "d" in state:
            state["d"] = torch.zeros_like(state["d"])
        return self._optimiser

    def _sum_gradients(self, params: list[Tensor]) -> None:
        if self.reducer.world_size == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(self.reducer.sum(p.grad))


def _trial(objective: Objective, backward: bool) -> float:
    """f at a trial point; -inf where the model's validation refuses the parameters (outside
    a distribution's support: an overflowing step), so the step is not taken."""
    try:
        return objective.evaluate(backward)
    except ValueError:
        return -math.inf


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
