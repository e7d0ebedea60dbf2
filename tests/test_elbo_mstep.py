"""ELBO and log evidence from Pyro against closed forms; closed-form and gradient M-steps agree."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import blobs

from inference.elbo import (
    elbo_from_table,
    log_evidence_from_table,
    pyro_elbo,
    pyro_log_evidence,
)
from inference.em import e_step
from inference.enumerate import log_joint
from inference.guides import Delta
from inference.init import kmeans_plusplus
from inference.mstep import (
    closed_form_m_step,
    gradient_m_step,
    relocate_empty_components,
    sufficient_statistics,
)
from inference.responsibilities import Responsibilities
from models import RestrictedGMM


@pytest.mark.parametrize("seed", range(3))
def test_pyro_trace_elbo_with_delta_guide_is_minus_half_sse(seed):
    x = blobs(200, 4, 3, seed=seed)
    locs = x[:4] + 0.5
    model = RestrictedGMM(locs)
    est = e_step(model, Delta(), x)
    n, d = x.shape
    sse = float(((x - locs[est.labels]) ** 2).sum())
    closed = -sse / 2 - n * d / 2 * math.log(2 * math.pi) - n * math.log(4)
    assert pyro_elbo(model, x, est.q, 4) == pytest.approx(closed, rel=1e-12)
    assert est.elbo == pytest.approx(closed, rel=1e-12)


def test_log_evidence_pyro_equals_logsumexp_of_table_and_bounds_the_elbo():
    x = blobs(150, 3, 2, seed=4)
    model = RestrictedGMM(x[:3])
    table = log_joint(model, x)
    by_hand = float(torch.logsumexp(table, 1).sum())
    assert pyro_log_evidence(model, x) == pytest.approx(by_hand, rel=1e-12)
    assert float(log_evidence_from_table(table)) == pytest.approx(by_hand, rel=1e-12)
    q = Delta().e_step(table)
    assert float(elbo_from_table(table, q)) <= by_hand


def test_soft_q_elbo_matches_its_definition():
    table = torch.tensor([[-1.0, -2.0, -4.0], [-3.0, -0.5, -0.5]], dtype=torch.float64)
    w = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    expected = sum(
        w[i, c] * (table[i, c] - math.log(w[i, c]))
        for i in range(2)
        for c in range(3)
        if w[i, c] > 0
    )
    assert float(elbo_from_table(table, Responsibilities(w, None))) == pytest.approx(
        float(expected)
    )


def test_closed_form_m_step_is_the_mean_of_assigned_points():
    x = blobs(120, 3, 2, seed=5)
    model = RestrictedGMM(x[:3].clone())
    est = e_step(model, Delta(), x)
    closed_form_m_step(model, x, est.q, est.point_fit)
    for c in range(3):
        torch.testing.assert_close(model.locs[c].detach(), x[est.labels == c].mean(0))


def test_soft_weights_give_weighted_means():
    x = torch.tensor([[0.0], [2.0], [4.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)
    model = RestrictedGMM(torch.zeros(2, 1, dtype=torch.float64))
    model.m_step(sufficient_statistics(model, x, Responsibilities(w, None)))
    torch.testing.assert_close(
        model.locs.detach(), torch.tensor([[2.0 / 3], [10.0 / 3]], dtype=torch.float64)
    )


@pytest.mark.parametrize("seed", range(3))
def test_gradient_m_step_reaches_the_closed_form_optimum(seed):
    x = blobs(200, 4, 3, seed=seed)
    init = kmeans_plusplus(x, 4, torch.Generator().manual_seed(seed)) + 0.5
    closed, grad = RestrictedGMM(init), RestrictedGMM(init)
    est = e_step(closed, Delta(), x)
    assert closed_form_m_step(closed, x, est.q, est.point_fit) == 0  # no empty component to refill
    gradient_m_step(grad, x, est.q)
    torch.testing.assert_close(grad.locs.detach(), closed.locs.detach(), rtol=0, atol=1e-6)


def test_gradient_m_step_with_soft_q_matches_weighted_means():
    x = blobs(60, 2, 2, seed=7)
    w = torch.softmax(
        torch.randn(60, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 1
    )
    q = Responsibilities(w, None)
    closed, grad = RestrictedGMM(x[:2].clone()), RestrictedGMM(x[:2].clone())
    closed.m_step(sufficient_statistics(closed, x, q))
    gradient_m_step(grad, x, q)
    torch.testing.assert_close(grad.locs.detach(), closed.locs.detach(), rtol=0, atol=1e-6)


def test_empty_component_takes_the_farthest_point():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    model = RestrictedGMM(
        torch.tensor([[1.0], [100.0]], dtype=torch.float64)
    )  # component 1 is empty
    est = e_step(model, Delta(), x)
    assert est.labels.tolist() == [0, 0, 0, 0]
    n = closed_form_m_step(model, x, est.q, est.point_fit)
    assert n == 1
    torch.testing.assert_close(
        model.locs.detach(), torch.tensor([[1.0], [10.0]], dtype=torch.float64)
    )


def test_relocation_moves_statistics_without_losing_points():
    x = blobs(30, 2, 2, seed=1)
    model = RestrictedGMM(torch.stack([x.mean(0), x.mean(0) + 1e3]))
    est = e_step(model, Delta(), x)
    stats = sufficient_statistics(model, x, est.q)
    fixed, n = relocate_empty_components(model, stats, x, est.q, est.point_fit)
    assert n == 1 and float(fixed["counts"].sum()) == 30 and bool((fixed["counts"] > 0).all())
    # the model sums offsets from its fixed reference point (its initial locs' mean)
    total = fixed["sum_dx"].sum(0) + fixed["counts"].sum() * model.reference()
    torch.testing.assert_close(total, x.sum(0))
