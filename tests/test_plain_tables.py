"""Plain Pyro models, read as exponential families: the same tables as Pyro's own log_prob.

The models in ``models/`` are written as a Pyro user writes them (``Normal(locs[z], 1)``,
``MultivariateNormal(locs[z], scale_tril=...)``, ``Bernoulli(probs[z])`` ...). When the site is
in ``inference.expfam``'s table its enumerated table is one GEMM; switching the recognition off
(``site_terms.recognise`` -> None) gives Pyro's own log_prob over a (K, n, D) broadcast. Both
must agree, stay accurate in float32 far from the origin, and give Pyro's own ELBOs.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import blobs

from inference import site_terms
from inference.elbo import pyro_elbo, pyro_log_evidence
from inference.em import e_step, fit
from inference.enumerate import iter_log_joint, log_joint
from inference.guides import Delta
from inference.mstep import sufficient_statistics
from models import GMM, RestrictedGMM

KINDS = ("full", "diag", "spherical", "tied")


def random_locs(k: int, d: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    return torch.randn(k, d, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 4


def pyro_table(monkeypatch, model, x, chunk_size=16384):
    """The table by Pyro's own log_prob: the exponential-family reading switched off."""
    with monkeypatch.context() as patch:
        patch.setattr(site_terms, "recognise", lambda *a, **k: None)
        return log_joint(model, x, chunk_size)


def gmm(kind: str, k: int, d: int, dtype=torch.float64, seed: int = 2) -> GMM:
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(k, d, generator=g, dtype=dtype) * 3
    a = torch.randn(k, d, d, generator=g, dtype=dtype)
    full = a @ a.mT / d + 0.5 * torch.eye(d, dtype=dtype)
    cov = {
        "full": full,
        "tied": full[0],
        "diag": full.diagonal(0, 1, 2),
        "spherical": full[:, 0, 0],
    }
    weights = torch.softmax(torch.randn(k, generator=g, dtype=dtype), 0)
    return GMM(locs, cov[kind], weights, covariance_type=kind)


@pytest.mark.parametrize(
    ("n", "k", "d"), [(200, 5, 3), (1, 3, 2), (30, 1, 4), (64, 16, 1), (300, 40, 3), (2, 17, 2)]
)
def test_restricted_gmm_table_is_pyros_in_float64(n, k, d, monkeypatch):
    x = blobs(n, k, d, seed=n + k)
    model = RestrictedGMM(random_locs(k, d, torch.float64))
    torch.testing.assert_close(
        log_joint(model, x), pyro_table(monkeypatch, model, x), rtol=1e-12, atol=1e-10
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("n", "k", "d"), [(150, 4, 3), (1, 2, 2), (40, 1, 1)])
def test_gmm_table_is_pyros_in_float64(kind, n, k, d, monkeypatch):
    x = blobs(n, 3, d, seed=n)
    model = gmm(kind, k, d)
    torch.testing.assert_close(
        log_joint(model, x), pyro_table(monkeypatch, model, x), rtol=1e-11, atol=1e-9
    )


@pytest.mark.parametrize("kind", ["restricted", *KINDS])
def test_float32_far_from_the_origin_is_as_precise_as_float64(kind):
    # the expanded form cancels ||x||^2 against 2 x.mu; the family's shift (the locs' mean)
    # keeps the GEMM on centred numbers. Data and parameters are float32 numbers in both.
    x = (blobs(300, 4, 3, seed=5) + 1e6).float()
    if kind == "restricted":
        model32 = RestrictedGMM(random_locs(4, 3, torch.float32) + 1e6)
        model64 = RestrictedGMM(model32.locs.detach().double())
    else:
        model64 = gmm(kind, 4, 3)
        model64.locs = (model64.locs.detach() + 1e6).float().double()
        model64.covariances = model64.covariances.detach().float().double()
        model32 = gmm(kind, 4, 3, dtype=torch.float32)
        model32.locs, model32.covariances = model64.locs.float(), model64.covariances.float()
        model32.weights = model64.weights.detach().float()
    single, double = log_joint(model32, x), log_joint(model64, x.double())
    torch.testing.assert_close(single.double(), double, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize(
    "model_of", [lambda x: RestrictedGMM(x[:3] + 0.3), lambda x: gmm("full", 3, 2)]
)
def test_pyro_elbos_equal_the_e_step(model_of):
    x = blobs(120, 3, 2, seed=6)
    model = model_of(x)
    est = e_step(model, Delta(), x)
    assert pyro_elbo(model, x, est.q, 3) == pytest.approx(est.elbo, rel=1e-12)
    assert pyro_log_evidence(model, x) == pytest.approx(est.log_evidence, rel=1e-12)


def test_float32_labels_agree_with_float64():
    x = blobs(20_000, 64, 16, seed=7)
    locs = fit(RestrictedGMM(x[:64].clone()), x, max_iter=5).model.locs.detach()
    double = e_step(RestrictedGMM(locs), Delta(), x).labels
    single = e_step(RestrictedGMM(locs.float()), Delta(), x.float()).labels
    assert float((single == double).double().mean()) >= 0.9999


def test_float32_fit_with_a_huge_offset_clusters_correctly():
    # float32 spacing at 1e8 is 8: a spread of 100 and separation of ~1000 are still resolved,
    # but only when neither the E-step's GEMM nor the M-step's sums see the raw coordinates
    g = torch.Generator().manual_seed(0)
    centres = (torch.rand(6, 4, generator=g, dtype=torch.float64) * 16 - 8) * 1000
    truth = torch.randint(6, (3000,), generator=g)
    offsets = centres[truth] + 100 * torch.randn(3000, 4, generator=g, dtype=torch.float64)
    x = (1e8 + offsets).float()
    init = x[[int((truth == c).nonzero()[0]) for c in range(6)]]  # one point of each cluster
    result = fit(RestrictedGMM(init), x)
    assert torch.equal(result.labels, truth)
    means = torch.stack([x.double()[truth == c].mean(0) for c in range(6)])
    torch.testing.assert_close(result.model.locs.double(), means, rtol=0, atol=32.0)


def test_delta_q_is_n_ints_and_n_floats_and_chunks_do_not_matter():
    x = blobs(1000, 4, 3, seed=8)
    model = RestrictedGMM(x[:4].clone())
    whole, chunked = e_step(model, Delta(), x, chunk_size=4096), e_step(model, Delta(), x, 7)
    assert whole.q.weights.shape == (1000, 1) and whole.q.indices is not None
    assert torch.equal(whole.labels, chunked.labels)
    assert chunked.elbo == pytest.approx(whole.elbo, rel=1e-12)
    assert max(t.shape[0] for _, t in iter_log_joint(model, x, 7)) == 7


def test_closed_form_constant_is_the_normal_constant():
    x = torch.zeros(1, 3, dtype=torch.float64)
    table = log_joint(RestrictedGMM(torch.zeros(2, 3, dtype=torch.float64)), x)
    expected = -1.5 * math.log(2 * math.pi) - math.log(2)
    torch.testing.assert_close(table, torch.full((1, 2), expected, dtype=torch.float64))


@pytest.mark.parametrize("d", [2, 16])
def test_chunking_changes_the_table_by_rounding_at_most(d):
    # BLAS may pick another kernel for another number of rows (1 row: a matrix-vector product),
    # so bit-identity across chunkings is not promised; agreement to rounding and labels is
    x = blobs(60, 20, d, seed=10)
    model = RestrictedGMM(random_locs(20, d, torch.float64))
    whole = log_joint(model, x)
    for chunk_size in (1, 7, 32):
        chunked = log_joint(model, x, chunk_size)
        torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-12)
        assert torch.equal(chunked.argmax(1), whole.argmax(1))


def test_statistics_stay_additive_after_the_locs_move():
    # stepwise and distributed EM add statistics taken under different parameters: the
    # family's sums are about the model's fixed reference, not its current locs
    x = blobs(400, 3, 2, seed=11)
    model = RestrictedGMM(x[:3].clone() + 1.0)
    first, second = x[:200], x[200:]
    q_a = e_step(model, Delta(), first).q
    stats_a = sufficient_statistics(model, first, q_a)
    model.m_step(stats_a)  # the locs move; the reference must not
    q_b = e_step(model, Delta(), second).q
    stats_b = sufficient_statistics(model, second, q_b)
    assert torch.equal(stats_a["shift"], stats_b["shift"])
    model.m_step({k: stats_a[k] + stats_b[k] if k != "shift" else stats_a[k] for k in stats_a})
    labels = torch.cat([q_a.labels(), q_b.labels()])
    expected = torch.stack([x[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(model.locs.detach(), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_gmm_samples_have_the_components_moments(kind):
    model = gmm(kind, 3, 2)
    z = torch.tensor([1])
    draws = model.component(z).sample((20000,))[:, 0]
    locs = model.locs.detach()[1]
    torch.testing.assert_close(draws.mean(0), locs, atol=0.1, rtol=0)
