"""``mixem compare``'s figure (distance to the best final ELBO and KL gap, per point, one legend
entry per guide) and each guide's saved labels and parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import blobs

from inference.compare import compare, write_compare_outputs
from inference.compare_plot import LINEAR_BELOW, compare_curves, compare_figure
from inference.init import kmeans_plusplus
from inference.params import get_params
from models import RestrictedGMM

GUIDES = ["delta", "categorical", "tempered:0.5"]


@pytest.fixture(scope="module")
def results():
    x = blobs(300, 3, 2, seed=8, spread=2.5)
    init = kmeans_plusplus(x, 3, torch.Generator().manual_seed(8))
    return x, compare(RestrictedGMM(init), x, GUIDES, max_iter=8, tol=0.0)


def test_curves_are_per_point_distances_from_the_best_final_elbo(results):
    x, fits = results
    n = x.shape[0]
    curves = compare_curves({k: r.trace for k, r in fits.items()}, n)
    best = max(r.trace[-1].elbo for r in fits.values())
    for label, fit in fits.items():
        c = curves[label]
        later = fit.trace[1:]  # iteration 0 left out: theta_0 would set the axis
        assert c.steps.tolist() == [r.iteration for r in later] and c.steps[0] == 1
        np.testing.assert_allclose(c.below_best, [(best - r.elbo) / n for r in later], rtol=0)
        np.testing.assert_allclose(c.kl_gap, [r.kl_gap / n for r in later], rtol=0)
    winner = max(fits, key=lambda k: fits[k].trace[-1].elbo)
    assert curves[winner].below_best[-1] == 0.0
    assert (curves["delta"].below_best >= 0).all()  # every Delta ELBO is below the best
    assert np.abs(curves["categorical"].kl_gap).max() < 1e-9  # the exact family: no gap


def test_figure_has_two_symlog_panels_and_one_legend_entry_per_guide(results):
    import matplotlib.pyplot as plt

    x, fits = results
    fig = compare_figure({k: r.trace for k, r in fits.items()}, x.shape[0], "t")
    try:
        top, bottom = fig.axes
        assert top.get_yscale() == bottom.get_yscale() == "symlog"
        assert top.yaxis.get_transform().linthresh == LINEAR_BELOW
        assert [t.get_text() for t in top.get_legend().get_texts()] == GUIDES
        assert bottom.get_legend() is None
    finally:
        plt.close(fig)


def test_each_guide_saves_its_labels_and_parameters(results, tmp_path):
    x, fits = results
    write_compare_outputs(tmp_path, fits, {"n": x.shape[0]})
    for label, fit in fits.items():
        where = tmp_path / "guides" / label.replace(":", "_")
        np.testing.assert_array_equal(np.load(where / "labels.npy"), fit.labels.numpy())
        saved = np.load(where / "params.npz")
        for name, value in get_params(fit.model).items():
            np.testing.assert_array_equal(saved[name], value.numpy())


def test_curves_need_a_positive_n(results):
    _, fits = results
    with pytest.raises(ValueError, match="n must be >= 1"):
        compare_curves({k: r.trace for k, r in fits.items()}, 0)
