"""What the EM loop records after each E-step, and when a hard family's fit stops."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from inference.guides import GuideFamily
from inference.state import EStep
from inference.trace import TraceRecord


def global_term(model: Any, n_total: int) -> float:
    """The model's ``global_elbo_term(n_total)``, 0 without one.

    A model with a global factor (a MAP prior on its parameters, or a global latent variable
    whose q the M-step sets, as the stick-breaking weights of ``models.dp_mixture``) declares
    the part of its ELBO that is not a sum of per-point table entries; it is added to each
    record's ELBO and log evidence, so the recorded ELBO is the whole objective the E-step and
    M-step raise. Computed once, not per worker: ``n_total`` is the number of points of all
    workers.
    """
    term = getattr(model, "global_elbo_term", None)
    return float(term(n_total)) if callable(term) else 0.0


def record(
    iteration: int,
    est: EStep,
    n_changed: int,
    n_relocated: int,
    started: float,
    extra: float = 0.0,
) -> TraceRecord:
    """The record of an E-step; ``extra`` is the model's ``global_term`` under theta_t."""
    return TraceRecord(
        iteration,
        est.elbo + extra,
        est.log_evidence + extra,
        est.log_evidence - est.elbo,
        n_changed,
        n_relocated,
        time.perf_counter() - started,
        est.amortisation_gap,
    )


def stop_reason(
    family: GuideFamily,
    shift: float,
    shift_tol: Callable[[], float],
    n_changed: int,
    n_relocated: int,
    est: EStep,
    previous: EStep,
) -> str | None:
    """Why a hard family's fit stops after this iteration, or None to go on (see ``fit``)."""
    # scikit-learn's order: the shift of this M-step is judged before the labels it yields
    if family.hard and shift <= shift_tol():
        return "parameter shift below tol"
    if family.hard and n_changed == 0 and (n_relocated == 0 or est.elbo <= previous.elbo):
        # a refill that moved no label and raised no ELBO only shuffles duplicate points
        # among tied components (K > distinct points); going on would cycle (sklearn #28055)
        if getattr(family, "search", None) is not None:
            # only the candidates were searched: a fixed point of the search, which need not
            # put every point at its best component
            return "truncated search unchanged"
        return "assignments unchanged"
    return None
