"""Chunked reads from .npy files and mini-batch (stepwise) EM."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import blobs

from inference.distributed import LOCAL
from inference.em import fit
from inference.errors import MixemError
from inference.init import kmeans_plusplus
from inference.online import fit_minibatch, step_size
from inference.source import NpySource, shard_bounds
from models import RestrictedGMM


def test_source_reads_the_same_rows_as_the_array(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "x.npy", x)
    assert NpySource(tmp_path / "x.npy").dtype == torch.float32  # the file's float dtype, kept
    source = NpySource(tmp_path / "x.npy", "float64")
    assert source.shape == (20, 3) and len(source) == 20
    torch.testing.assert_close(source[3:11], torch.from_numpy(x[3:11]).double())
    torch.testing.assert_close(source[18:99], torch.from_numpy(x[18:]).double())
    shard = source.shard(1, 3)
    assert (shard.start, shard.stop) == (7, 14)
    torch.testing.assert_close(shard[0:2], torch.from_numpy(x[7:9]).double())


@pytest.mark.parametrize(("n", "world"), [(10, 3), (2, 4), (7, 1), (100, 7)])
def test_shards_cover_the_rows_in_order(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_source_rejects_what_it_cannot_stream(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(5))
    with pytest.raises(MixemError, match="2-D"):
        NpySource(tmp_path / "one.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((4, 3))))
    with pytest.raises(MixemError, match="Fortran"):
        NpySource(tmp_path / "f.npy")


def test_local_reducer_is_the_identity():
    t = torch.arange(4.0)
    assert LOCAL.sum(t) is t and LOCAL.gather(t) is t and LOCAL.world_size == 1


def test_step_sizes_start_at_one_and_decrease():
    rhos = [step_size(t) for t in range(50)]
    assert rhos[0] == 1.0 and all(b < a for a, b in itertools.pairwise(rhos))


def test_one_batch_of_everything_is_one_lloyd_step():
    x = blobs(200, 3, 2, seed=0)
    init = x[:3].clone()
    online = fit_minibatch(RestrictedGMM(init), x, batch_size=200, n_passes=1.0)
    batch = fit(RestrictedGMM(init), x, max_iter=1, tol=0.0)
    torch.testing.assert_close(online.model.locs.detach(), batch.model.locs.detach())
    assert torch.equal(online.labels, batch.labels) and online.n_iter == 1


@pytest.mark.parametrize("seed", range(2))
def test_minibatch_reaches_full_batch_sse_within_one_percent_in_fewer_passes(seed):
    x = blobs(10_000, 8, 4, seed=seed, spread=1.5)
    init = kmeans_plusplus(x, 8, torch.Generator().manual_seed(seed))

    def sse(result):
        return float(((x - result.model.locs.detach()[result.labels]) ** 2).sum())

    full = fit(RestrictedGMM(init), x)
    online = fit_minibatch(RestrictedGMM(init), x, batch_size=500, n_passes=1.0, seed=seed)
    assert sse(online) <= 1.01 * sse(full)
    assert full.n_iter > 1  # full batch needed more than the one pass mini-batch used


def test_minibatch_rejects_bad_settings():
    x = blobs(50, 2, 2, seed=0)
    with pytest.raises(MixemError, match="kappa"):
        fit_minibatch(RestrictedGMM(x[:2]), x, kappa=0.3)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_minibatch_gmm_statistics_add_up_across_m_steps(covariance_type):
    # a GMM's statistics are taken about a fixed shift; about the moving means they would mix
    # references across the running average (variance 40x too large before the fix)
    from inference.guides import Categorical
    from models.gmm import GMM

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=g, dtype=torch.float64) + torch.tensor([100.0, -50.0])
    cov = torch.eye(2, dtype=torch.float64)[None] if covariance_type == "full" else torch.ones(1, 2)
    model = GMM(x[:1].clone(), cov.double(), covariance_type=covariance_type)
    fit_minibatch(model, x, Categorical(), batch_size=100, n_passes=2)
    variances = model.covariances.detach().reshape(-1)[[0, -1]]
    torch.testing.assert_close(variances, x.var(0, unbiased=False), rtol=0.1, atol=0)
    torch.testing.assert_close(model.locs.detach()[0], x.mean(0), rtol=0, atol=0.05)


def test_big_endian_files_stream_like_native_ones(tmp_path):
    x = np.arange(12, dtype=">f8").reshape(4, 3)
    np.save(tmp_path / "be.npy", x)
    torch.testing.assert_close(
        NpySource(tmp_path / "be.npy")[1:3], torch.tensor(x[1:3].astype("<f8"))
    )
