"""One Pyro trace per chunk length: reused only where the data reach the model as its observation.

``inference.enumerate`` traces a model once per chunk length and evaluates that trace's sites on
every chunk of the length. These tests hold the reused tables to fresh traces' tables, count
the traces, and check the models the reuse must not fool: data-dependent distributions, masks
and observations.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from conftest import blobs
from pyro import poutine

from inference.em import e_step
from inference.enumerate import iter_log_joint, log_joint
from inference.guides import Delta
from models import GMM, RestrictedGMM, VMFMixture

LOCS = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]], dtype=torch.float64)


def per_chunk_truth(model, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The table with a fresh trace for every chunk (each chunk alone, so nothing is reused)."""
    return torch.cat(
        [log_joint(model, x[s : s + chunk_size]) for s in range(0, len(x), chunk_size)]
    )


class Counting:
    """A model that counts its traces."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor) -> None:
        self.calls += 1
        self.model(x)


def test_one_trace_per_chunk_length_after_one_check():
    x = blobs(100, 3, 2, seed=0)
    counted = Counting(RestrictedGMM(LOCS.clone()))
    first = log_joint(counted, x, chunk_size=30)  # 30, 30, 30, 10 rows
    assert counted.calls == 3  # the 30-row trace, its check against a fresh one, the 10-row one
    counted.calls = 0
    again = log_joint(counted, x, chunk_size=30)
    assert counted.calls == 3  # checked again: once per call (an E-step), nothing kept between
    assert torch.equal(first, again)
    assert torch.equal(first, per_chunk_truth(counted.model, x, 30))


def test_reused_traces_give_fresh_traces_tables_for_every_model_kind():
    x = blobs(90, 3, 2, seed=1)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    covariances = torch.eye(2, dtype=torch.float64).expand(3, 2, 2) * 1.5
    models = [
        RestrictedGMM(LOCS.clone()),
        GMM(LOCS.clone(), covariances.clone(), weights=weights),
    ]
    for model in models:
        assert torch.equal(log_joint(model, x, 20), per_chunk_truth(model, x, 20))
    units = x / x.norm(dim=1, keepdim=True)  # vMF observes x / |x|: traced per chunk
    vmf = VMFMixture(LOCS[1:] / LOCS[1:].norm(dim=1, keepdim=True), torch.tensor(2.0).double())
    assert torch.equal(log_joint(vmf, units, 20), per_chunk_truth(vmf, units, 20))


def test_a_model_computing_its_distribution_from_the_data_is_traced_per_chunk():
    def data_dependent(x: torch.Tensor) -> None:  # not a density of x: the check must catch it
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3, dtype=x.dtype)))
            loc = LOCS[z] + x.mean(0)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    x = blobs(80, 3, 2, seed=2)
    counted = Counting(data_dependent)
    for _ in range(2):  # each call checks afresh, and finds it out
        counted.calls = 0
        assert torch.equal(log_joint(counted, x, 20), per_chunk_truth(data_dependent, x, 20))
        assert counted.calls == 4  # one per chunk (the check's serves the second); else 2


def test_a_mask_from_the_data_is_never_reused():
    model = RestrictedGMM(LOCS.clone())

    def masked(x: torch.Tensor) -> None:
        with poutine.mask(mask=x[:, 0] > 0):
            model(x)

    counted = Counting(masked)
    x = blobs(60, 3, 2, seed=3)
    table = log_joint(counted, x, 20)
    assert counted.calls == 3  # a per-point mask: every chunk traced
    assert torch.equal(table, per_chunk_truth(masked, x, 20))


def test_folding_the_prior_into_the_gemm_bias_changes_rounding_only():
    # mask=True is the same model, but a masked site is not offered the prior to fold
    x = blobs(200, 8, 5, seed=4).float()
    weights = torch.softmax(torch.arange(8.0) / 4, 0)  # unequal: the prior is no constant
    covariances = torch.eye(5).expand(8, 5, 5).clone()
    locs = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)) * 3
    for model in (RestrictedGMM(locs), GMM(locs, covariances, weights=weights)):
        folded = log_joint(model, x)
        unfolded = log_joint(poutine.mask(model, mask=True), x)
        torch.testing.assert_close(folded, unfolded, rtol=1e-6, atol=1e-5)
        assert torch.equal(folded.argmax(1), unfolded.argmax(1))


def test_e_steps_with_reused_traces_match_chunk_by_chunk_e_steps():
    x = blobs(500, 4, 3, seed=5).float()
    model = RestrictedGMM(x[:4].clone())
    whole = e_step(model, Delta(), x, chunk_size=64)
    parts = [e_step(model, Delta(), x[s : s + 64], chunk_size=64) for s in range(0, 500, 64)]
    assert torch.equal(whole.labels, torch.cat([p.labels for p in parts]))
    assert torch.equal(whole.point_fit, torch.cat([p.point_fit for p in parts]))
    tables = [t.clone() for _, t in iter_log_joint(model, x, 64)]
    assert torch.equal(torch.cat(tables), per_chunk_truth(model, x.float(), 64))


def test_a_mask_inside_the_distribution_is_never_reused():
    # dist.mask hides the per-point mask from the site; the first pair of chunks agree here
    def robust(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3, dtype=x.dtype)))
            near = dist.Normal(LOCS[z], 1.0).to_event(1).mask(x.norm(dim=1) < 50)
            pyro.sample("x", near, obs=x)

    x = blobs(12, 3, 2, seed=6)
    x[9] = 100.0  # an outlier in the third chunk of 4, masked out
    assert torch.equal(log_joint(robust, x, 4), per_chunk_truth(robust, x, 4))


def test_subclasses_with_their_own_log_prob_are_not_read_as_the_family():
    class OwnLogProb(dist.Normal):
        def log_prob(self, value: torch.Tensor) -> torch.Tensor:
            return super().log_prob(value) - 0.5  # a different density: must be used as is

    x = blobs(40, 3, 2, seed=7)
    reference = log_joint(RestrictedGMM(LOCS.clone()), x)

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3, dtype=x.dtype)))
            pyro.sample("x", OwnLogProb(LOCS[z], 1.0).to_event(1), obs=x)

    torch.testing.assert_close(log_joint(model, x, 16), reference - 1.0)
