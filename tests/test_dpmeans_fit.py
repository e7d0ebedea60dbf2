"""DP-means through ``inference.fit`` (a model instance as the template), and the EM loop's
``global_elbo_term`` hook that a model with a global factor declares."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import blobs

from inference import Categorical, Delta, fit
from inference.distributed import Reducer
from inference.dpmeans import dp_means
from inference.errors import MixemError
from models import GMM, PoissonMixture, RestrictedGMM


def test_fit_with_dp_lambda_is_dp_means_from_the_template_family():
    x = blobs(500, 5, 3, seed=17, spread=1.1)
    template = RestrictedGMM(x[:2].clone())  # its K and locs do not matter, its class does
    got = fit(template, x, dp_lambda=8.0, max_k=6)
    want = dp_means("restricted-gmm", x, 8.0, max_k=6)
    assert got.model.n_components == want.model.n_components > 1
    assert torch.equal(got.labels, want.labels)
    assert torch.equal(got.model.locs, want.model.locs)
    assert [r.dp_objective for r in got.trace] == [r.dp_objective for r in want.trace]
    assert template.n_components == 2  # the template is not changed


def test_fit_with_dp_lambda_takes_the_poisson_family():
    g = torch.Generator().manual_seed(5)
    rates = torch.tensor([[1.0] * 4, [9.0] * 4], dtype=torch.float64)
    x = torch.poisson(rates[torch.randint(2, (300,), generator=g)], generator=g)
    got = fit(PoissonMixture(torch.ones(3, 4, dtype=torch.float64)), x, dp_lambda=6.0)
    want = dp_means("poisson", x, 6.0)
    assert torch.equal(got.labels, want.labels) and got.model.n_components >= 2


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"dp_lambda": 1.0, "guide": Categorical()}, "DP-means is the Delta guide's limit"),
        ({"max_k": 3}, "max_k is a DP-means setting"),
        ({"dp_lambda": 1.0, "m_step": "gradient"}, "leave m_step out"),
        ({"dp_lambda": -2.0}, "lambda must be a finite number >= 0"),
    ],
)
def test_fit_dp_bad_arguments_are_one_line(kwargs, text):
    x = blobs(60, 2, 2, seed=1)
    with pytest.raises(MixemError, match=text) as err:
        fit(RestrictedGMM(x[:2].clone()), x, **kwargs)
    assert "\n" not in str(err.value)


def test_fit_dp_refuses_other_families_and_several_workers():
    x = blobs(60, 2, 2, seed=2)
    with pytest.raises(MixemError, match="got GMM"):
        fit(GMM.from_centres(x[:2].clone(), x), x, dp_lambda=1.0)

    class TwoWorkers(Reducer):
        def sum(self, value):
            return value

    with pytest.raises(MixemError, match="one process"):
        fit(RestrictedGMM(x[:2].clone()), x, Delta(), dp_lambda=1.0, reducer=TwoWorkers())


class WithGlobalTerm(RestrictedGMM):
    """A restricted GMM whose objective has a global part: a Gaussian log prior on locs."""

    def global_elbo_term(self, n_total: int) -> float:
        return float(-0.5 * self.locs.detach().square().sum()) + 0.001 * n_total


@pytest.mark.parametrize("guide", [Delta(), Categorical()])
def test_records_add_the_models_global_term(guide):
    x = blobs(300, 3, 2, seed=4, spread=1.0)
    start = x[[0, 100, 200]].clone()
    plain = fit(RestrictedGMM(start), x, guide, max_iter=3, tol=0)
    model = WithGlobalTerm(start)
    seen = []
    with_term = fit(model, x, guide, max_iter=3, tol=0, callback=lambda r: seen.append(r))
    # the same steps (the hook changes what is recorded, not the fit), each record shifted by
    # the term under the parameters of its E-step
    assert torch.equal(with_term.labels, plain.labels)
    for t, (a, b) in enumerate(zip(plain.trace, with_term.trace, strict=True)):
        locs = start if t == 0 else None
        if locs is not None:
            term = float(-0.5 * locs.square().sum()) + 0.3
            assert b.elbo == pytest.approx(a.elbo + term, rel=1e-12)
        assert b.elbo - a.elbo == pytest.approx(b.log_evidence - a.log_evidence, rel=1e-9)
        assert b.kl_gap == pytest.approx(a.kl_gap, abs=1e-9)
    final = float(-0.5 * model.locs.detach().square().sum()) + 0.3
    assert with_term.trace[-1].elbo == pytest.approx(plain.trace[-1].elbo + final, rel=1e-12)
    assert seen == with_term.trace
    assert np.isfinite([r.elbo for r in seen]).all()
