"""The ELBO, the log evidence and the gap between them: from the table, and from Pyro.

From the table (what the EM loop records; no extra pass over the data):

    ELBO(q, theta)      = sum_i sum_c q_ic (log_joint_ic - log q_ic)
    log p(X | theta)    = sum_i logsumexp_c log_joint_ic
    KL(q || posterior)  = log p(X | theta) - ELBO >= 0

From Pyro (the cross-check, and what a Pyro user would compute): ``Trace_ELBO`` with a Delta
guide, ``TraceEnum_ELBO`` with an enumerated guide, and ``TraceEnum_ELBO`` with ``"z"``
enumerated in the model and an empty guide for the log evidence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from torch import Tensor

from inference import native
from inference.enumerate import enumerate_assignment_only, isolated_params
from inference.guides import is_exact_for_trace_elbo, pyro_guide
from inference.reductions import logsumexp_rows
from inference.responsibilities import Responsibilities


def expected_log_joint_per_point(log_joint: Tensor, q: Responsibilities) -> Tensor:
    """(n,) E_q[log p(x_i, z_i)] for a chunk; ``log_joint`` is (n, K)."""
    picked = log_joint if q.indices is None else log_joint.gather(1, q.indices)
    # 0 * (-inf) must count as 0: a component q gives no weight to contributes nothing
    return torch.where(q.weights > 0, q.weights * picked, 0.0).sum(1)


def entropy_per_point(q: Responsibilities) -> Tensor:
    """(n,) H(q_i) = -sum_c q_ic log q_ic, with 0 log 0 = 0."""
    if q.weights.shape[1] == 1:  # one state per point, of probability 1
        return q.weights.new_zeros(q.weights.shape[0])
    return -torch.special.xlogy(q.weights, q.weights).sum(1)


def fit_and_entropy(log_joint: Tensor, q: Responsibilities) -> tuple[Tensor, Tensor]:
    """``expected_log_joint_per_point`` and ``entropy_per_point`` of a chunk, each (n,), or
    what the guide family took of them already (``q.facts``, from this very table); a dense
    float32 q takes one fused pass (``inference.native``) instead of several with a log each."""
    facts, weights = q.facts, q.weights
    if facts is not None and facts.point_fit is not None:
        entropy = facts.entropy if facts.entropy is not None else entropy_per_point(q)
        return facts.point_fit, entropy
    if (
        q.indices is None
        and native.handles(log_joint)
        and native.handles(weights)
        and weights.is_contiguous()
        and weights.shape == log_joint.shape
    ):
        return native.expectation(log_joint, weights)
    return expected_log_joint_per_point(log_joint, q), entropy_per_point(q)


def elbo_from_table(log_joint: Tensor, q: Responsibilities) -> Tensor:
    """Scalar ELBO of the chunk; ``log_joint`` is (n, K) and ``q`` covers the same n points."""
    return (expected_log_joint_per_point(log_joint, q) + entropy_per_point(q)).sum()


def log_evidence_from_table(log_joint: Tensor) -> Tensor:
    """Scalar sum_i log p(x_i | theta) of the chunk; ``log_joint`` is (n, K)."""
    return logsumexp_rows(log_joint).sum()


def _empty_guide(x: Tensor) -> None:
    """Guide with no sites: every latent site of the model is enumerated instead."""


def pyro_elbo(
    model: Callable[[Tensor], object], x: Tensor, q: Responsibilities, n_components: int
) -> float:
    """ELBO(q, theta) computed by Pyro.

    Args:
        model: mixture following the site contract.
        x: (N, D) data.
        q: responsibilities of the N points.
        n_components: K.
    """
    guide = pyro_guide(q, n_components)
    loss = Trace_ELBO() if is_exact_for_trace_elbo(q) else TraceEnum_ELBO(max_plate_nesting=1)
    with isolated_params(), torch.no_grad():
        return -float(loss.loss(model, guide, x))


def pyro_log_evidence(model: Callable[[Tensor], object], x: Tensor) -> float:
    """log p(X | theta) computed by Pyro, summing ``"z"`` out by enumeration; ``x`` is (N, D)."""
    enumerated = poutine.infer_config(model, enumerate_assignment_only)
    with isolated_params(), torch.no_grad():
        return -float(TraceEnum_ELBO(max_plate_nesting=1).loss(enumerated, _empty_guide, x))
