"""Truncated top-k E-steps: with the whole search space they are TopK / Delta exactly; with a
small one the ELBO still never decreases; the candidate path equals the enumerated table."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import blobs

from inference.em import e_step, fit
from inference.enumerate import isolated_params, log_joint
from inference.errors import MixemError
from inference.guides import (
    Delta,
    TopK,
    TruncatedTopK,
    candidate_log_joint,
    select_top,
    truncated_e_step,
)
from inference.observed import model_form
from inference.truncated_fit import fit_truncated
from models import MODELS, RestrictedGMM


def start(x: torch.Tensor, k: int, seed: int = 1) -> torch.Tensor:
    """(k, D) distinct random rows of ``x`` (N, D)."""
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:k]]


@pytest.mark.parametrize("by_form", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_candidate_log_joint_equals_the_enumerated_table(by_form, dtype):
    x = blobs(300, 6, 3, seed=0, dtype=dtype)
    model = RestrictedGMM(start(x, 6))
    candidates = torch.randint(6, (4, 300), generator=torch.Generator().manual_seed(0))
    found = model_form(model, x) if by_form else None  # dot products, or a conditioned trace
    with isolated_params(), torch.no_grad():
        values = candidate_log_joint(model, x, candidates, found)
    table = log_joint(model, x)  # (N, K)
    assert values.shape == (4, 300)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(values, table.T.gather(0, candidates), rtol=tol, atol=tol * 100)


def test_a_gmm_takes_the_truncated_search():
    # a full-covariance GMM: its candidates by the MultivariateNormal family's dot products
    x = blobs(400, 6, 2, seed=3)
    model = MODELS["gmm"].from_centres(start(x, 6), x)
    result = fit_truncated(model, x, 1, 2, max_iter=5)
    assert result.labels.shape == (400,) and result.n_iter >= 1


def test_select_top_skips_duplicates_and_breaks_ties_to_the_lowest_id():
    candidates = torch.tensor([[4, 2], [2, 7], [4, 5], [1, 7]])  # (m, n) = (4, 2)
    values = torch.tensor([[1.0, 0.0], [3.0, 2.0], [1.0, -1.0], [1.0, 2.0]])
    kept, ids = select_top(values, candidates, 3)
    assert ids.T.tolist() == [[2, 1, 4], [7, 2, 5]]
    assert kept.T.tolist() == [[3.0, 1.0, 1.0], [2.0, 0.0, -1.0]]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_full_search_space_equals_topk_on_the_table(k):
    x = blobs(500, 7, 3, seed=k, spread=2.0)
    model = RestrictedGMM(start(x, 7))
    exact = e_step(model, TopK(k), x)
    assert exact.q.indices is not None
    first = e_step(model, TopK(k), x, 128)
    assert torch.equal(first.q.indices, exact.q.indices)
    torch.testing.assert_close(first.q.weights, exact.q.weights)
    assert first.elbo == pytest.approx(exact.elbo, rel=1e-12)
    assert first.log_evidence == pytest.approx(exact.log_evidence, rel=1e-12)
    stale = torch.roll(exact.q.indices, 1, dims=0)  # other points' candidate sets
    truncated = truncated_e_step(TruncatedTopK(k, 6), model, x, stale, 100)
    assert torch.equal(truncated.q.indices, exact.q.indices)
    torch.testing.assert_close(truncated.q.weights, exact.q.weights)
    torch.testing.assert_close(truncated.point_fit, exact.point_fit)
    assert truncated.elbo == pytest.approx(exact.elbo, rel=1e-12)
    assert math.isnan(truncated.log_evidence)


def test_first_e_step_keeps_the_tie_rule_of_topk():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=torch.float64)
    locs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 0.0], [5.0, 5.0]], dtype=torch.float64)
    model = RestrictedGMM(locs)
    exact = e_step(model, TopK(2), x)
    first = e_step(model, TopK(2), x, 2)
    assert exact.q.indices is not None
    assert torch.equal(first.q.indices, exact.q.indices)


@pytest.mark.parametrize("k", [2, 3])
def test_fit_with_full_neighbourhoods_equals_fit_with_topk(k):
    x = blobs(400, 5, 2, seed=3, spread=2.5)
    init = start(x, 5)
    exact = fit(RestrictedGMM(init), x, TopK(k), max_iter=50, tol=1e-6)
    ours = fit_truncated(RestrictedGMM(init), x, k, 4, max_iter=50, tol=1e-6)
    assert (ours.n_iter, ours.stop_reason) == (exact.n_iter, exact.stop_reason)
    assert torch.equal(ours.labels, exact.labels)
    assert ours.q.indices is not None and exact.q.indices is not None
    assert torch.equal(ours.q.indices, exact.q.indices)
    torch.testing.assert_close(ours.model.locs, exact.model.locs)
    for mine, theirs in zip(ours.trace, exact.trace, strict=True):
        assert mine.elbo == pytest.approx(theirs.elbo, rel=1e-10)
    assert ours.trace[0].log_evidence == pytest.approx(exact.trace[0].log_evidence, rel=1e-12)
    assert all(math.isnan(r.log_evidence) and math.isnan(r.kl_gap) for r in ours.trace[1:])


def test_k1_with_full_neighbourhoods_is_hard_em_and_lloyd():
    from sklearn.cluster import KMeans

    x = blobs(600, 6, 3, seed=5, spread=1.5)
    init = start(x, 6)
    hard = fit(RestrictedGMM(init), x, Delta(), tol=1e-4)
    ours = fit_truncated(RestrictedGMM(init), x, 1, 5, tol=1e-4)
    assert (ours.n_iter, ours.stop_reason) == (hard.n_iter, hard.stop_reason)
    assert torch.equal(ours.labels, hard.labels)
    torch.testing.assert_close(ours.model.locs, hard.model.locs)
    km = KMeans(6, init=init.numpy(), n_init=1, tol=1e-4, algorithm="lloyd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km.fit(x.numpy())
    assert torch.equal(ours.labels, torch.from_numpy(km.labels_).long())


@pytest.mark.parametrize(("k", "neighbours"), [(1, 2), (2, 1), (2, 3), (3, 0)])
def test_elbo_never_decreases_on_separated_blobs(k, neighbours):
    x = blobs(2000, 40, 4, seed=7)
    result = fit_truncated(RestrictedGMM(start(x, 40)), x, k, neighbours, max_iter=40, tol=0.0)
    elbos = torch.tensor([r.elbo for r in result.trace], dtype=torch.float64)
    assert all(r.n_relocated == 0 for r in result.trace)  # refills void the guarantee
    assert bool((elbos.diff() >= -1e-9 * elbos.abs()[1:]).all())


def test_truncation_reaches_the_full_fit_on_well_separated_blobs():
    x = blobs(3000, 30, 4, seed=11, spread=0.5)
    init = start(x, 30)
    exact = fit(RestrictedGMM(init), x, TopK(2), max_iter=100)
    ours = fit_truncated(RestrictedGMM(init), x, 2, 3, max_iter=100, evidence_every=5)
    assert ours.trace[-1].elbo >= exact.trace[-1].elbo - 1e-6 * abs(exact.trace[-1].elbo)
    fives = [r for r in ours.trace if r.iteration % 5 == 0]
    assert all(math.isfinite(r.log_evidence) and r.kl_gap >= -1e-6 for r in fives)


def test_neighbourhoods_by_co_occurrence_without_locs():
    class NoLocs:
        n_components = 4

    indices = torch.tensor([[0, 1], [0, 1], [0, 2], [3, 2]])
    near = TruncatedTopK(2, 1).neighbourhoods(NoLocs(), indices)
    assert near[:, 0].tolist() == [1, 0, 0, 2] or near[:, 0].tolist() == [1, 0, 3, 2]
    with pytest.raises(MixemError, match="has no locs"):
        TruncatedTopK(1, 1).neighbourhoods(NoLocs(), indices[:, :1])


@pytest.mark.parametrize(
    ("k", "neighbours", "match"),
    [
        (0, 2, "k >= 1"),
        (1.5, 2, "k >= 1"),
        (True, 2, "k >= 1"),
        (1, -1, "neighbours G >= 0"),
        (6, 2, "k <= K = 5"),
    ],
)
def test_bad_arguments_say_what_to_fix(k, neighbours, match):
    x = blobs(50, 5, 2, seed=0)
    with pytest.raises(MixemError, match=match):
        fit_truncated(RestrictedGMM(start(x, 5)), x, k, neighbours)


def test_bad_loop_settings_are_rejected():
    x = blobs(50, 5, 2, seed=0)
    with pytest.raises(MixemError, match="evidence_every"):
        fit_truncated(RestrictedGMM(start(x, 5)), x, 1, 2, evidence_every=-1)


def test_guide_spec_topk_k_g_is_the_truncated_family():
    from inference.guides import parse_guide

    family = parse_guide("topk:2:3", 8)
    assert family == TruncatedTopK(2, 3) and family.name == "topk:2:3" and not family.hard
    assert parse_guide("topk:1:0", 8).hard
    for bad in ("topk:2:x", "topk:2:-1", "topk:9:1", "topk::2"):
        with pytest.raises(MixemError, match="topk:k or topk:k:G"):
            parse_guide(bad, 8)


def test_cli_fit_with_a_truncated_guide(tmp_path, capsys):
    """`mixem fit --guide topk:k:G`: the records after the first have no log evidence, written
    as null (JSON) and said as such; G = K - 1 gives the topk:k fit."""
    import json

    from inference.cli import main

    def fit(guide: str, out: str) -> dict:
        args = ["fit", "--model", "restricted-gmm", "--guide", guide, "--k", "6"]
        assert (
            main([*args, "--data", "builtin:blobs", "--out", str(tmp_path / out), "--quiet"]) == 0
        )
        return json.loads((tmp_path / out / "summary.json").read_text())

    truncated, full = fit("topk:2:5", "t"), fit("topk:2", "f")
    assert "log evidence not computed" in capsys.readouterr().out
    assert truncated["log_evidence"] is None and full["log_evidence"] is not None
    assert truncated["elbo"] == pytest.approx(full["elbo"], rel=1e-12)
    assert truncated["n_iter"] == full["n_iter"]
    trace = json.loads((tmp_path / "t" / "trace.json").read_text())
    assert trace[0]["log_evidence"] is not None and trace[1]["log_evidence"] is None


def test_switching_from_a_search_to_a_full_e_step_counts_changed_labels():
    """A schedule from topk:2:1 to topk:2: the full E-step takes over the search's q memory;
    the labels the search returned must survive it, or n_changed would read 0."""
    x = blobs(600, 2, 6, seed=3)
    schedule = lambda t: TruncatedTopK(2, 1) if t < 3 else TopK(2)  # noqa: E731

    def labels_after(m_steps: int) -> torch.Tensor:
        return fit(RestrictedGMM(start(x, 6)), x, schedule, max_iter=m_steps, tol=0.0).labels

    switched = fit(RestrictedGMM(start(x, 6)), x, schedule, max_iter=3, tol=0.0)
    expected = int((labels_after(2) != labels_after(3)).sum())
    assert switched.trace[3].n_changed == expected
