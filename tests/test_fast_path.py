"""The GEMM component distribution: the same model as Normal(locs[z], 1), only faster.

Both observation distributions of ``RestrictedGMM`` (``fast=True``, the default, and the
textbook ``fast=False``) must give the same enumerated table, the same Pyro ELBOs and the same
fits; the fast one must also stay accurate in float32 far from the origin.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import blobs

from inference.elbo import log_evidence_from_table, pyro_elbo, pyro_log_evidence
from inference.em import e_step, fit
from inference.enumerate import iter_log_joint, log_joint
from inference.guides import Delta
from inference.init import kmeans_plusplus
from inference.reductions import logsumexp_rows, max_rows
from models import RestrictedGMM
from models.components import ExpFamilyComponents, IsotropicNormalComponents


def random_locs(k: int, d: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    return torch.randn(k, d, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 4


@pytest.mark.parametrize(
    ("n", "k", "d"), [(200, 5, 3), (1, 3, 2), (30, 1, 4), (64, 16, 1), (300, 40, 3), (2, 17, 2)]
)
def test_fast_and_fallback_tables_agree_in_float64(n, k, d):
    x = blobs(n, k, d, seed=n + k)
    locs = random_locs(k, d, torch.float64)
    fast, slow = log_joint(RestrictedGMM(locs), x), log_joint(RestrictedGMM(locs, fast=False), x)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-10)


def test_fast_and_fallback_tables_agree_in_float32():
    x = blobs(500, 8, 6, seed=3, dtype=torch.float32)
    locs = random_locs(8, 6, torch.float32)
    fast, slow = log_joint(RestrictedGMM(locs), x), log_joint(RestrictedGMM(locs, fast=False), x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-3)


def test_table_is_exact_far_from_the_origin():
    # the expanded form cancels ||x||^2 against 2 x.mu; centring at the locs' mean avoids it
    x = blobs(300, 4, 3, seed=5, dtype=torch.float32) + 1e6
    locs = random_locs(4, 3, torch.float32) + 1e6
    single = log_joint(RestrictedGMM(locs), x)
    double = log_joint(RestrictedGMM(locs.double(), fast=False), x.double())
    torch.testing.assert_close(single.double(), double, rtol=1e-5, atol=1e-3)


def test_enumerated_assignment_picks_columns_and_per_point_assignment_gathers():
    x = blobs(40, 3, 2, seed=0)
    locs = random_locs(3, 2, torch.float64)
    table = IsotropicNormalComponents(locs, torch.arange(3)[:, None]).log_prob(x)  # (3, 40)
    picked = IsotropicNormalComponents(locs, torch.tensor([[2], [0]])).log_prob(x)
    torch.testing.assert_close(picked, table[[2, 0]])
    z = torch.randint(3, (40,), generator=torch.Generator().manual_seed(0))
    per_point = IsotropicNormalComponents(locs, z).log_prob(x)
    expected = dist.Normal(locs[z], 1.0).to_event(1).log_prob(x)
    torch.testing.assert_close(per_point, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per_point, table.T.gather(1, z[:, None])[:, 0])


def test_generic_exponential_family_form_equals_the_specialised_one():
    x = blobs(50, 4, 3, seed=2)
    components = IsotropicNormalComponents(random_locs(4, 3, torch.float64), torch.arange(4))
    generic = ExpFamilyComponents.log_prob_table(components, x)
    torch.testing.assert_close(generic, components.log_prob_table(x), rtol=1e-12, atol=1e-10)
    z = torch.arange(4).repeat(13)[:50]
    generic_assigned = ExpFamilyComponents.log_prob_assigned(
        IsotropicNormalComponents(components.locs, z), x
    )
    torch.testing.assert_close(generic_assigned, components.log_prob_table(x)[torch.arange(50), z])


def test_sampling_uses_the_assigned_locs():
    locs = torch.tensor([[0.0, 0.0], [100.0, -100.0]])
    components = IsotropicNormalComponents(locs, torch.tensor([1, 0, 1]))
    draws = components.sample(torch.Size([2000]))
    assert draws.shape == (2000, 3, 2)
    torch.testing.assert_close(draws.mean(0), locs[[1, 0, 1]], atol=0.15, rtol=0)


@pytest.mark.parametrize("fast", [True, False])
def test_pyro_elbos_equal_the_table_for_both_paths(fast):
    x = blobs(120, 3, 2, seed=6)
    model = RestrictedGMM(x[:3] + 0.3, fast=fast)
    est = e_step(model, Delta(), x)
    assert pyro_elbo(model, x, est.q, 3) == pytest.approx(est.elbo, rel=1e-12)
    assert pyro_log_evidence(model, x) == pytest.approx(est.log_evidence, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("seed", "k"), [(0, 5), (1, 5), (2, 24)])  # both table layouts
def test_fast_and_fallback_fits_are_identical(dtype, seed, k):
    x = blobs(600, k, 3, seed=seed, dtype=dtype, spread=2.0)
    init = kmeans_plusplus(x, k, torch.Generator().manual_seed(seed))
    fast = fit(RestrictedGMM(init), x, tol=0.0)
    slow = fit(RestrictedGMM(init, fast=False), x, tol=0.0)
    assert torch.equal(fast.labels, slow.labels) and fast.n_iter == slow.n_iter
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fast.model.locs, slow.model.locs, rtol=tol, atol=tol)


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
    assert whole.q.indices.shape == (1000, 1)
    assert torch.equal(whole.labels, chunked.labels)
    assert chunked.elbo == pytest.approx(whole.elbo, rel=1e-12)
    assert max(t.shape[0] for _, t in iter_log_joint(model, x, 7)) == 7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_reductions_equal_torch(dtype):
    table = torch.randn(300, 9, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 300
    table[::5, 4] = table[::5].amax(1)  # ties go to the lowest column, as in torch.argmax
    values, indices = max_rows(table)
    assert torch.equal(indices, table.argmax(1)) and torch.equal(values, table.amax(1))
    torch.testing.assert_close(logsumexp_rows(table), torch.logsumexp(table, 1))
    assert float(log_evidence_from_table(table)) == pytest.approx(
        float(torch.logsumexp(table, 1).sum()), rel=1e-6
    )


def test_closed_form_constant_is_the_normal_constant():
    x = torch.zeros(1, 3, dtype=torch.float64)
    table = log_joint(RestrictedGMM(torch.zeros(2, 3, dtype=torch.float64)), x)
    expected = -1.5 * math.log(2 * math.pi) - math.log(2)
    torch.testing.assert_close(table, torch.full((1, 2), expected, dtype=torch.float64))


def test_reused_buffers_keep_two_sites_apart_and_match_fresh_tables():
    def two_views(x):  # the same point observed twice: each site gets its own buffer
        locs = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]], dtype=x.dtype)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3, dtype=x.dtype)))
            pyro.sample("x", IsotropicNormalComponents(locs, z), obs=x)
            pyro.sample("x_again", IsotropicNormalComponents(2 * locs, z), obs=x)

    x = blobs(50, 3, 2, seed=9)
    fresh = log_joint(two_views, x, chunk_size=16)
    reused = torch.cat([t.clone() for _, t in iter_log_joint(two_views, x, 16, reuse=True)])
    torch.testing.assert_close(reused, fresh, rtol=0, atol=0)
    one = log_joint(RestrictedGMM(torch.tensor([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]])), x.float())
    assert not torch.allclose(fresh.float(), one)  # the second site did count


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
    # stepwise and distributed EM add statistics taken under different parameters
    x = blobs(400, 3, 2, seed=11)
    model = RestrictedGMM(x[:3].clone() + 1.0)
    first, second = x[:200], x[200:]
    q_a = e_step(model, Delta(), first).q
    stats_a = model.sufficient_statistics(first, q_a)
    model.m_step(stats_a)  # the locs move; the reference must not
    q_b = e_step(model, Delta(), second).q
    stats_b = model.sufficient_statistics(second, q_b)
    model.m_step({k: stats_a[k] + stats_b[k] for k in stats_a})
    labels = torch.cat([q_a.labels(), q_b.labels()])
    expected = torch.stack([x[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(model.locs.detach(), expected)
