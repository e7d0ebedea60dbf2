"""The Delta family: its ELBO-optimal member is the argmax of the table = nearest centroid."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import blobs, nearest_centroid
from pyro.infer import Trace_ELBO

from inference.em import e_step
from inference.enumerate import log_joint
from inference.guides import Delta, parse_guide, pyro_guide
from inference.responsibilities import Responsibilities
from models import RestrictedGMM


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(5))
def test_delta_e_step_is_nearest_centroid(dtype, seed):
    x = blobs(300, 6, 4, seed=seed, dtype=dtype)
    locs = x[torch.randperm(300, generator=torch.Generator().manual_seed(seed))[:6]] + 0.1
    labels = e_step(RestrictedGMM(locs), Delta(), x).labels
    assert torch.equal(labels, nearest_centroid(x, locs))


def test_ties_go_to_the_lowest_index():
    # each point is exactly equidistant from the two centres at +-1 on the first axis
    x = torch.tensor([[0.0, 0.0], [0.0, 5.0], [0.0, -2.0]], dtype=torch.float64)
    locs = torch.tensor([[9.0, 9.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    labels = e_step(RestrictedGMM(locs), Delta(), x).labels
    assert labels.tolist() == [1, 1, 1]
    assert torch.equal(labels, nearest_centroid(x, locs))


def test_delta_e_step_comes_from_the_table_not_a_distance():
    table = torch.tensor([[0.0, 2.0, 1.0], [5.0, -1.0, 5.0]])
    q = Delta().e_step(table)
    assert q.indices is not None and q.indices[:, 0].tolist() == [1, 0]
    assert torch.equal(q.weights, torch.ones(2, 1))


def brute_force_best(model, x, k):
    """argmax over all K^N joint assignments of Pyro's Trace_ELBO with a Delta guide."""
    elbo, best, best_value = Trace_ELBO(), None, -float("inf")
    for assignment in itertools.product(range(k), repeat=x.shape[0]):
        q = Responsibilities.one_hot(torch.tensor(assignment), x.dtype)
        value = -float(elbo.loss(model, pyro_guide(q, k), x))
        if value > best_value + 1e-12:
            best, best_value = assignment, value
    return list(best), best_value


@pytest.mark.parametrize("seed", range(4))
def test_delta_e_step_maximises_pyro_elbo_over_all_joint_assignments(seed):
    x = blobs(5, 3, 2, seed=seed, spread=3.0)
    model = RestrictedGMM(
        torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3
    )
    best, best_value = brute_force_best(model, x, 3)
    est = e_step(model, Delta(), x)
    assert est.labels.tolist() == best
    assert est.elbo == pytest.approx(best_value, rel=1e-12)


def test_parse_guide_knows_delta_and_rejects_the_rest():
    assert parse_guide("delta", 3) == Delta()
    with pytest.raises(ValueError, match="unknown guide 'nope'"):
        parse_guide("nope", 3)


def test_pyro_guide_samples_the_assignment_inside_the_data_plate():
    import pyro.poutine as poutine

    q = Responsibilities.one_hot(torch.tensor([2, 0, 1]), torch.float64)
    trace = poutine.trace(pyro_guide(q, 3)).get_trace(torch.zeros(3, 2))
    site = trace.nodes["z"]
    assert site["value"].tolist() == [2, 0, 1]
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    log_joint(RestrictedGMM(torch.zeros(3, 2)), torch.zeros(3, 2))  # the model side of the contract
