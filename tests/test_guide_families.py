"""The guide families beside Delta: orderings of their ELBOs, EM under each, and their limits."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from conftest import blobs, nearest_centroid

from inference.elbo import elbo_from_table, log_evidence_from_table, pyro_elbo, pyro_log_evidence
from inference.em import e_step, fit
from inference.enumerate import log_joint
from inference.errors import MixemError
from inference.guides import (
    Anneal,
    Categorical,
    Delta,
    Sampled,
    Tempered,
    TopK,
    parse_anneal,
    parse_guide,
)
from inference.init import kmeans_plusplus, random_points
from inference.mstep import closed_form_m_step, gradient_m_step
from models import RestrictedGMM

K = 4


def overlapping(seed: int, n: int = 120) -> tuple[torch.Tensor, RestrictedGMM]:
    """Data with overlapping clusters and a model at random rows, so no q is nearly one-hot."""
    x = blobs(n, K, 2, seed=seed, spread=2.5)
    return x, RestrictedGMM(random_points(x, K, torch.Generator().manual_seed(seed)) + 0.3)


def table_elbo(table: torch.Tensor, spec: str) -> float:
    return float(elbo_from_table(table, parse_guide(spec, K).e_step(table)))


@pytest.mark.parametrize("seed", range(5))
def test_elbo_ordering_for_fixed_parameters(seed):
    x, model = overlapping(seed)
    table = log_joint(model, x)
    evidence = float(log_evidence_from_table(table))
    delta = table_elbo(table, "delta")
    topk = [table_elbo(table, f"topk:{k}") for k in range(1, K + 1)]
    exact = table_elbo(table, "categorical")
    assert topk[0] == delta
    chain = [delta, *topk, exact]
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(chain)), chain
    assert delta < topk[1] < exact  # strict where the posterior is not one-hot
    assert exact == pytest.approx(evidence, rel=1e-13)
    assert topk[-1] == pytest.approx(exact, rel=1e-13)
    assert table_elbo(table, "tempered:1") == exact


@pytest.mark.parametrize("spec", ["categorical", "topk:2", "topk:3", "topk:4", "tempered:0.4"])
def test_pyro_enumerated_elbo_agrees_with_the_closed_form(spec):
    x, model = overlapping(7, n=60)
    table = log_joint(model, x)
    q = parse_guide(spec, K).e_step(table)
    if spec.startswith("topk:") and spec != f"topk:{K}":
        assert bool((q.dense(K) == 0).any())  # the guide really has states of probability 0
    assert pyro_elbo(model, x, q, K) == pytest.approx(float(elbo_from_table(table, q)), rel=1e-12)
    if spec == "categorical":
        assert pyro_elbo(model, x, q, K) == pytest.approx(pyro_log_evidence(model, x), rel=1e-12)


def test_topk_one_is_delta_and_topk_k_is_categorical_member_by_member():
    x, model = overlapping(3)
    table = log_joint(model, x)
    one, delta = TopK(1).e_step(table), Delta().e_step(table)
    assert torch.equal(one.indices, delta.indices) and torch.equal(one.weights, delta.weights)
    full = TopK(K).e_step(table)
    torch.testing.assert_close(full.dense(K), Categorical().e_step(table).weights)
    assert torch.equal(Tempered(1.0).e_step(table).weights, Categorical().e_step(table).weights)


def test_topk_keeps_the_k_largest_renormalised_and_breaks_ties_low():
    table = torch.tensor([[0.0, 2.0, 1.0, 2.0], [-1.0, -3.0, -2.0, -1.5]], dtype=torch.float64)
    q = TopK(2).e_step(table)
    assert q.indices.tolist() == [[1, 3], [0, 3]] and q.weights.shape == (2, 2)
    posterior = torch.softmax(table, 1)
    kept = posterior.gather(1, q.indices)
    torch.testing.assert_close(q.weights, kept / kept.sum(1, keepdim=True))
    assert TopK(1).e_step(table).indices[:, 0].tolist() == [1, 0]  # argmax's tie rule


@pytest.mark.parametrize("k", [2, 3, 7])
def test_topk_equals_a_stable_sort_with_many_ties(k):
    """topk is taken by torch.topk with the tied rows sorted stably: the same indices as a
    stable sort of every row, on a table full of ties and on one with none."""
    g = torch.Generator().manual_seed(k)
    with_nans = torch.randn(300, 9, generator=g)
    with_nans[torch.rand(300, 9, generator=g) < 0.2] = float("nan")  # NaN != NaN: still tied
    tables = (torch.randint(0, 4, (300, 9), generator=g).double(), torch.randn(300, 9), with_nans)
    for table in tables:
        expected = torch.sort(table, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(TopK(k).e_step(table).indices, expected)


def test_tempered_approaches_delta_as_t_goes_to_zero():
    x, model = overlapping(4)
    table = log_joint(model, x)
    delta = table_elbo(table, "delta")
    temperatures = [1.0, 0.3, 0.1, 0.03, 0.01, 1e-3]
    gaps = [abs(table_elbo(table, f"tempered:{t}") - delta) for t in temperatures]
    assert all(b <= a for a, b in itertools.pairwise(gaps)) and gaps[0] > 1.0
    assert gaps[-1] < 1e-6
    cold = Tempered(1e-4).e_step(table)
    assert torch.equal(cold.labels(), Delta().e_step(table).indices[:, 0])
    # a T small enough to overflow log_joint / T still gives the one-hot limit, not NaN
    frozen = Tempered(1e-320).e_step(table)
    assert torch.equal(frozen.weights, Delta().e_step(table).dense(K))
    # and no tempered member beats the exact posterior
    assert all(
        table_elbo(table, f"tempered:{t}") <= table_elbo(table, "categorical") for t in [2.0, 0.5]
    )


def test_sampled_draws_from_the_posterior_reproducibly_and_never_an_impossible_state():
    row = torch.tensor([[0.0, -1.0, float("-inf"), -0.5]], dtype=torch.float64)
    table = row.expand(20000, 4)
    draws = Sampled(seed=5).e_step(table).indices[:, 0]
    assert torch.equal(draws, Sampled(seed=5).e_step(table).indices[:, 0])
    assert not torch.equal(draws, Sampled(seed=6).e_step(table).indices[:, 0])
    frequencies = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert frequencies[2] == 0
    # binomial standard error is < 0.004 here; 0.015 is ~4 of them
    torch.testing.assert_close(frequencies, torch.softmax(row, 1)[0], atol=0.015, rtol=0)


def test_sampled_fit_is_reproducible_from_its_seed():
    x, model = overlapping(1)
    runs = [
        fit(copy.deepcopy(model), x, parse_guide("sampled", K, seed=s), max_iter=5)
        for s in (2, 2, 3)
    ]
    assert [r.elbo for r in runs[0].trace] == [r.elbo for r in runs[1].trace]
    assert [r.elbo for r in runs[0].trace] != [r.elbo for r in runs[2].trace]


@pytest.mark.parametrize("spec", ["delta", "categorical", "topk:2", "topk:3"])
@pytest.mark.parametrize("seed", range(8))
def test_exact_families_never_decrease_the_elbo(spec, seed):
    x, model = overlapping(seed, n=150)
    result = fit(model, x, parse_guide(spec, K), max_iter=15, tol=0.0)
    # tol=0 runs soft families to max_iter; a hard one may stop earlier at a fixed point
    assert result.n_iter == 15 or result.stop_reason == "assignments unchanged"
    for before, after in zip(result.trace, result.trace[1:], strict=False):
        if after.n_relocated == 0:  # refilling an empty component is not an ascent step
            assert after.elbo >= before.elbo - 1e-9 * abs(before.elbo)
        assert after.elbo <= after.log_evidence + 1e-9 * abs(after.log_evidence)


@pytest.mark.parametrize("spec", ["categorical", "tempered:0.5", "topk:2", "topk:3"])
def test_e_step_does_not_depend_on_the_chunk_size(spec):
    x, model = overlapping(0, n=50)
    whole = e_step(model, parse_guide(spec, K), x)
    chunked = e_step(model, parse_guide(spec, K), x, chunk_size=7)
    # BLAS may take another kernel for another number of rows: the weights agree to a few
    # ulps of 1 (their scale), the labels and indices exactly
    eps = torch.finfo(whole.q.weights.dtype).eps
    torch.testing.assert_close(chunked.q.weights, whole.q.weights, rtol=0, atol=8 * eps)
    assert torch.equal(chunked.labels, whole.labels)
    if whole.q.indices is not None:
        assert torch.equal(chunked.q.indices, whole.q.indices)
    assert chunked.elbo == pytest.approx(whole.elbo, rel=1e-12)


@pytest.mark.parametrize("spec", ["delta", "categorical", "tempered:0.5", "topk:2", "sampled"])
def test_max_iter_counts_m_steps_and_the_trace_has_one_record_per_e_step(spec):
    x, model = overlapping(2, n=80)
    result = fit(model, x, parse_guide(spec, K), max_iter=3, tol=0.0)
    assert result.n_iter == 3 and result.stop_reason == "max_iter"
    assert [r.iteration for r in result.trace] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("spec", "reasons"),
    [
        ("delta", {"assignments unchanged", "parameter shift below tol"}),
        ("topk:1", {"assignments unchanged", "parameter shift below tol"}),
        ("categorical", {"ELBO change below tol"}),
        ("tempered:0.5", {"ELBO change below tol"}),
        ("topk:2", {"ELBO change below tol"}),
    ],
)
def test_each_family_stops_by_its_own_criterion(spec, reasons):
    x = blobs(200, 3, 2, seed=8)
    init = kmeans_plusplus(x, 3, torch.Generator().manual_seed(0))
    result = fit(RestrictedGMM(init), x, parse_guide(spec, 3), max_iter=200, tol=1e-4)
    assert result.converged and result.stop_reason in reasons and result.n_iter < 200
    if spec in ("categorical", "tempered:0.5", "topk:2"):
        last, before = result.trace[-1], result.trace[-2]
        assert abs(last.elbo - before.elbo) / 200 < 1e-4


def numpy_em(x: np.ndarray, means: np.ndarray, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Textbook EM for a GMM with identity covariances and equal weights (no Pyro, no torch)."""
    for _ in range(n_iter + 1):
        sq = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)
        logits = -0.5 * sq
        resp = np.exp(logits - logits.max(1, keepdims=True))
        resp /= resp.sum(1, keepdims=True)
        if _ == n_iter:
            return means, resp
        means = (resp.T @ x) / resp.sum(0)[:, None]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(3))
def test_categorical_em_equals_a_numpy_gmm_em(seed):
    x = blobs(400, 4, 3, seed=seed, spread=2.0)
    init = random_points(x, 4, torch.Generator().manual_seed(seed))
    result = fit(RestrictedGMM(init), x, Categorical(), max_iter=50, tol=0.0)
    means, resp = numpy_em(x.numpy(), init.numpy(), 50)
    assert result.n_iter == 50
    np.testing.assert_allclose(result.model.locs.detach().numpy(), means, rtol=0, atol=1e-8)
    np.testing.assert_allclose(result.q.weights.numpy(), resp, rtol=0, atol=1e-8)


def test_soft_em_tends_to_k_means_as_the_variance_goes_to_zero():
    """Scaling the data by s is a component variance of 1/s^2 on the original scale."""
    x = blobs(200, 4, 2, seed=9, spread=2.0)
    init = kmeans_plusplus(x, 4, torch.Generator().manual_seed(9))
    softness, agree = [], []
    for s in (0.5, 1.0, 3.0, 10.0, 30.0):
        soft = fit(RestrictedGMM(init * s), x * s, Categorical(), max_iter=60, tol=1e-12)
        hard = fit(RestrictedGMM(init * s), x * s, Delta(), max_iter=60, tol=0.0)
        softness.append(1 - soft.q.weights.max(1).values)  # (N,) mass off each point's mode
        agree.append(bool(torch.equal(soft.labels, hard.labels)))
        if s == 30.0:
            torch.testing.assert_close(soft.model.locs / s, hard.model.locs / s, rtol=0, atol=1e-9)
    means = [float(m.mean()) for m in softness]
    assert all(b < a for a, b in itertools.pairwise(means)), means
    assert means[0] > 0.05 and float(softness[-1].max()) < 1e-12
    assert agree[-2:] == [True, True] and not agree[0]


@pytest.mark.parametrize("spec", ["delta", "categorical", "tempered:0.5", "topk:2", "sampled"])
def test_gradient_m_step_equals_the_closed_form_for_every_family(spec):
    x, model = overlapping(6, n=60)
    est = e_step(model, parse_guide(spec, K, seed=1), x)
    closed, grad = copy.deepcopy(model), copy.deepcopy(model)
    closed_form_m_step(closed, x, est.q, est.point_fit)
    gradient_m_step(grad, x, est.q)
    torch.testing.assert_close(grad.locs.detach(), closed.locs.detach(), rtol=0, atol=1e-6)
    assert not torch.allclose(closed.locs.detach(), model.locs.detach())


def test_anneal_schedule_is_geometric_and_ends_where_asked():
    warm = Anneal(8.0, 1.0, 3)
    temperatures = [warm.temperature(t) for t in range(4)]
    assert temperatures == pytest.approx([8.0, 4.0, 2.0, 1.0])
    assert warm(0) == Tempered(8.0) and warm(3) == Categorical() and warm(10) == Categorical()
    cold = parse_anneal("4:0.25:2")
    assert cold.temperature(1) == pytest.approx(1.0)
    assert cold(2) == Tempered(0.25) and cold(3) == Delta() and cold(50) == Delta()
    assert cold.name == "anneal:4:0.25:2" and parse_anneal(cold.name) == cold


def test_fit_under_a_schedule_never_stops_while_it_is_still_cooling():
    x, model = overlapping(5)
    # a tol this loose stops any fixed family after one M-step ...
    assert fit(copy.deepcopy(model), x, Tempered(4.0), tol=1e3).n_iter == 1
    assert fit(copy.deepcopy(model), x, Delta(), tol=1e3).n_iter == 1
    # ... but a schedule only once two successive E-steps use the same family:
    # E-steps 0..6 are tempered, 7 and 8 delta, so the first check is after M-step 8
    hard = fit(copy.deepcopy(model), x, Anneal(4.0, 0.1, 6), tol=1e3)
    assert hard.n_iter == 8 and hard.stop_reason == "parameter shift below tol"
    assert torch.equal(hard.labels, nearest_centroid(x, hard.model.locs.detach()))
    # E-step 6 is at T = 1, i.e. categorical, as is 7
    exact = fit(copy.deepcopy(model), x, Anneal(4.0, 1.0, 6), tol=1e3)
    assert exact.n_iter == 7 and exact.stop_reason == "ELBO change below tol"
    assert exact.trace[-1].kl_gap == pytest.approx(0.0, abs=1e-8)
    assert exact.trace[3].kl_gap > 1.0  # while still tempered, q is not the posterior


@pytest.mark.parametrize(
    ("spec", "allowed"),
    [
        ("tempered:0", "T a finite number > 0"),
        ("tempered:-1", "T a finite number > 0"),
        ("tempered:abc", "T a finite number > 0"),
        ("tempered", "T a finite number > 0"),
        ("topk:0", "1 <= k <= K = 4"),
        ("topk:5", "1 <= k <= K = 4"),
        ("topk:abc", "1 <= k <= K = 4"),
        ("topk:1.5", "1 <= k <= K = 4"),
        ("sampled:-2", "SEED an integer >= 0"),
        ("delta:2", "takes no argument"),
        ("nope", "unknown guide 'nope'; choose one of: delta, categorical, tempered:T"),
    ],
)
def test_bad_guide_arguments_are_one_line_errors_naming_the_range(spec, allowed):
    with pytest.raises(MixemError) as info:
        parse_guide(spec, K)
    assert allowed in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("spec", ["1:2:3", "0:0:3", "5:1:0", "5:1", "5:0:3", "5:1.5:3", "a:1:2"])
def test_bad_anneal_schedules_are_one_line_errors(spec):
    with pytest.raises(MixemError, match=r"T0:T1:steps with T0 >= T1 > 0") as info:
        parse_anneal(spec)
    assert "\n" not in str(info.value)


def test_families_check_their_arguments_without_the_parser():
    for make in (lambda: Tempered(0.0), lambda: Tempered(float("nan")), lambda: TopK(0)):
        with pytest.raises(MixemError):
            make()
    with pytest.raises(MixemError, match="1 <= k <= K = 3"):
        TopK(4).e_step(torch.zeros(2, 3))
