"""The fused pass (``inference.fused``) is the generic EM loop, computed in one read of the data.

For every model of the table of families, and for a user's plain Pyro mixtures, a fit through
the pass equals the fit through the generic path (a Pyro table per chunk, the M-step's sums of
q taken in a second read): same labels, parameters and trace to float64 rounding. Models outside
the table (a Student-t mixture) still fit, through the generic path.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import blobs
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from inference import fused
from inference.em import fit
from inference.guides import Categorical, Delta, Tempered
from inference.init import kmeans_plusplus
from inference.observed import model_form
from models import MODELS, RestrictedGMM

GENERATOR = torch.Generator


def generic_fit(monkeypatch, *args, **kwargs):
    """The same fit with the fused path switched off."""
    with monkeypatch.context() as patch:
        patch.setattr(fused, "prepare", lambda *a, **k: None)
        return fit(*args, **kwargs)


def assert_same_fit(a, b, rtol=1e-9, hard=True):
    """Labels, parameters and trace of two fits; ``hard=False``: a soft q's labels are the
    argmax of its weights, which ties where rounding makes two weights equal (the pass takes
    the argmax of the table): their counts of changed labels are not compared."""
    assert torch.equal(a.labels, b.labels) or not hard
    assert a.n_iter == b.n_iter and a.stop_reason == b.stop_reason
    for name, value in a.model.named_parameters():
        other = dict(b.model.named_parameters())[name]
        torch.testing.assert_close(value, other, rtol=rtol, atol=1e-9)
    for ra, rb in zip(a.trace, b.trace, strict=True):
        assert math.isclose(ra.elbo, rb.elbo, rel_tol=rtol, abs_tol=1e-9)
        assert math.isclose(ra.log_evidence, rb.log_evidence, rel_tol=rtol, abs_tol=1e-9)
        assert ra.n_relocated == rb.n_relocated
        assert ra.n_changed == rb.n_changed or not hard


def data_for(name: str, n: int = 400, seed: int = 0) -> torch.Tensor:
    g = GENERATOR().manual_seed(seed)
    x = blobs(n, 4, 3, seed=seed)
    if name == "bernoulli":
        return (x > 0).double()
    if name == "poisson":
        return torch.poisson(x.abs(), generator=g)
    if name == "categorical":
        return torch.randint(0, 4, (n, 3), generator=g).double()
    if name == "vmf":
        return x / x.norm(dim=1, keepdim=True)
    return x


CASES = [
    ("restricted-gmm", {}),
    ("gmm", {"covariance_type": "full"}),
    ("gmm", {"covariance_type": "diag"}),
    ("gmm", {"covariance_type": "spherical"}),
    ("gmm", {"covariance_type": "tied"}),
    ("bernoulli", {}),
    ("poisson", {}),
    ("categorical", {}),
    ("vmf", {}),
    ("vmf", {"shared_concentration": True}),
]


def build(name: str, options: dict, x: torch.Tensor, k: int = 4, seed: int = 1):
    centres = x[torch.randperm(x.shape[0], generator=GENERATOR().manual_seed(seed))[:k]]
    return MODELS[name].from_centres(centres, x, **dict(options))


@pytest.mark.parametrize(("name", "options"), CASES)
@pytest.mark.parametrize("family", [Delta(), Categorical()])
def test_every_model_of_the_table_takes_the_pass(name, options, family, monkeypatch):
    x = data_for(name)
    assert model_form(build(name, options, x), x) is not None
    a = fit(build(name, options, x), x, family, max_iter=8, tol=0.0)
    b = generic_fit(monkeypatch, build(name, options, x), x, family, max_iter=8, tol=0.0)
    assert_same_fit(a, b, hard=family.hard)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family", [Delta(), Categorical(), Tempered(0.5)])
def test_the_categorical_fit_reads_its_codes_and_equals_the_dense_pass(dtype, family, monkeypatch):
    x = data_for("categorical", n=3000).to(dtype)
    data = fused.prepare(build("categorical", {}, x), x, 1000)
    assert data is not None and data.t.dtype == torch.int32 and data.t.shape == (3000, 3)
    assert torch.equal(data.t, x.to(torch.int32))  # the codes, not the (N, D C) one-hot
    a = fit(build("categorical", {}, x), x, family, max_iter=6, tol=0.0)

    def dense(codes, natural, bias, base, **options):  # the dense pass of the one-hot
        C = natural.shape[1] // codes.shape[1]
        t = torch.nn.functional.one_hot(codes.long(), C).reshape(len(codes), -1).to(natural)
        return fused.run_pass(t, natural, bias, base, None, **options)

    with monkeypatch.context() as patch:
        patch.setattr(fused, "run_codes_pass", dense)
        b = fit(build("categorical", {}, x), x, family, max_iter=6, tol=0.0)
    if dtype == torch.float64:
        assert_same_fit(a, b, hard=family.hard)
    else:  # float32: the same fit to its rounding (the sums' order differs)
        assert (a.labels != b.labels).float().mean() < 1e-3
        for ra, rb in zip(a.trace, b.trace, strict=True):
            assert math.isclose(ra.elbo, rb.elbo, rel_tol=1e-5)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family", [Delta(), Categorical(), Tempered(0.5)])
def test_the_gmm_with_learned_scales_builds_its_squares_in_the_pass(
    covariance_type, dtype, family, monkeypatch
):
    # T(x) = (x - r, (x - r)^2): prepare keeps x itself (no (N, 2 D) copy) and the pass builds
    # the squares per block; the fit equals the dense pass of the materialised T
    x = data_for("gmm", n=3000).to(dtype)
    options = {"covariance_type": covariance_type}
    data = fused.prepare(build("gmm", options, x), x, 1000)
    assert data is not None and data.squares and data.t.data_ptr() == x.data_ptr()
    assert data.kernel_shift is not None and data.kernel_shift.shape == (x.shape[1],)
    a = fit(build("gmm", options, x), x, family, max_iter=6, tol=0.0)

    run_pass = fused.run_pass

    def dense(t, natural, bias, base, shift, squares=False, **kw):  # the materialised T
        assert squares
        y = t - shift
        return run_pass(torch.cat([y, y * y], 1), natural, bias, base, None, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(fused, "run_pass", dense)
        b = fit(build("gmm", options, x), x, family, max_iter=6, tol=0.0)
    if dtype == torch.float64:
        assert_same_fit(a, b, hard=family.hard)
    else:  # float32: the same fit to its rounding
        assert (a.labels != b.labels).float().mean() < 1e-3
        for ra, rb in zip(a.trace, b.trace, strict=True):
            assert math.isclose(ra.elbo, rb.elbo, rel_tol=1e-5)


def test_tempered_family_through_the_pass_equals_the_generic_path(monkeypatch):
    x = blobs(500, 5, 2, seed=3)
    init = kmeans_plusplus(x, 5, GENERATOR().manual_seed(0))
    a = fit(RestrictedGMM(init), x, Tempered(0.4), max_iter=6, tol=0.0)
    b = generic_fit(monkeypatch, RestrictedGMM(init), x, Tempered(0.4), max_iter=6, tol=0.0)
    assert_same_fit(a, b, hard=False)


def test_distributions_depending_on_each_point_are_not_read_as_a_family():
    class PerPointScale(PyroModule):
        n_components = 2

        def __init__(self):
            super().__init__()
            self.locs = PyroParam(torch.tensor([[0.0], [3.0]], dtype=torch.float64))

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2, dtype=x.dtype)))
                scale = 1 + x.abs()  # the data reach the distribution: no exponential family
                pyro.sample("x", dist.Normal(self.locs[z], scale).to_event(1), obs=x)

    assert model_form(PerPointScale(), blobs(10, 2, 1, seed=0)) is None


class ExponentialMixture(PyroModule):
    """A user's plain Pyro mixture: learned rates and weights, no M-step of its own."""

    def __init__(self, rates: torch.Tensor):
        super().__init__()
        self.rates = PyroParam(rates.clone(), constraint=constraints.positive)
        self.logits = PyroParam(torch.zeros(rates.shape[0], dtype=rates.dtype))

    @property
    def n_components(self) -> int:
        return int(self.rates.shape[0])

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=self.logits))
            pyro.sample("x", dist.Exponential(self.rates[z]).to_event(1), obs=x)


class StudentTMixture(PyroModule):
    """Outside the table of families: Pyro's own log_prob, the gradient M-step."""

    def __init__(self, locs: torch.Tensor):
        super().__init__()
        self.locs = PyroParam(locs.clone())

    n_components = 3

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3, dtype=x.dtype)))
            pyro.sample("x", dist.StudentT(4.0, self.locs[z], 1.0).to_event(1), obs=x)


def test_a_users_plain_exponential_mixture_is_read_as_a_family_and_fits():
    g = GENERATOR().manual_seed(0)
    scale = torch.tensor([[0.5, 1.0], [4.0, 8.0]], dtype=torch.float64)
    labels = torch.randint(0, 2, (600,), generator=g)
    x = torch.empty(600, 2, dtype=torch.float64).exponential_(generator=g) * scale[labels]
    model = ExponentialMixture(torch.tensor([[1.5, 1.0], [0.3, 0.2]], dtype=torch.float64))
    found = model_form(model, x)
    assert found is not None and found.form.family == "exponential"
    result = fit(model, x, Categorical(), max_iter=60, tol=1e-8)  # the family's M-step
    for before, after in zip(result.trace, result.trace[1:], strict=False):
        assert after.elbo >= before.elbo - 1e-8 * abs(before.elbo)
    # the fitted means per component approach the generating ones, in some order
    means = (1 / model.rates.detach()).numpy()
    order = np.argsort(means[:, 0])
    np.testing.assert_allclose(means[order], scale.numpy(), rtol=0.25)


@pytest.mark.parametrize("family", [Delta(), Categorical()])
def test_the_family_m_step_reaches_the_optimum_pyros_gradient_m_step_reaches(family):
    # the same M-step objective, from the E-step's sums (K x F numbers) or from Pyro's ELBO
    # over all the data: the same parameters after each iteration, to L-BFGS's tolerance
    g = GENERATOR().manual_seed(1)
    x = torch.empty(400, 2, dtype=torch.float64).exponential_(generator=g)
    x[:200] *= 5.0
    start = torch.tensor([[2.0, 1.5], [0.5, 0.3]], dtype=torch.float64)
    by_sums = fit(ExponentialMixture(start), x, family, max_iter=4, tol=0.0, m_step="family")
    by_elbo = fit(ExponentialMixture(start), x, family, max_iter=4, tol=0.0, m_step="gradient")
    torch.testing.assert_close(by_sums.model.rates, by_elbo.model.rates, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(by_sums.model.logits, by_elbo.model.logits, rtol=1e-5, atol=1e-5)
    assert [r.elbo for r in by_sums.trace] == pytest.approx([r.elbo for r in by_elbo.trace])


def test_a_student_t_mixture_fits_through_the_generic_path():
    x = torch.cat([blobs(150, 1, 2, seed=s) + 6 * s for s in range(3)])
    model = StudentTMixture(x[[0, 150, 300]] + 0.5)
    assert model_form(model, x) is None
    result = fit(model, x, Delta(), max_iter=5, m_step="gradient")
    assert len(set(result.labels.tolist())) == 3
    for before, after in zip(result.trace, result.trace[1:], strict=False):
        assert after.elbo >= before.elbo - 1e-6 * abs(before.elbo)


def test_mixed_dtypes_are_refused_with_a_clear_message():
    x = blobs(50, 2, 2, seed=0)
    from inference.errors import MixemError

    with pytest.raises(MixemError, match="dtype float64"):
        fit(RestrictedGMM(x[:2].float()), x, Delta())


def test_the_pass_keeps_the_callers_threads_while_torch_runs_on_one(monkeypatch):
    # torch's small ops around the pass run on one thread (its idle OpenMP workers would spin
    # on the pass's cores); the pass itself and everything after the fit keep the caller's count
    x = blobs(400, 3, 2, seed=4)
    seen = []
    real_pass = fused.run_pass

    def spying_pass(*args, **kwargs):
        seen.append((kwargs["threads"], torch.get_num_threads()))
        return real_pass(*args, **kwargs)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(fused, "run_pass", spying_pass)
        model = RestrictedGMM(kmeans_plusplus(x, 3, GENERATOR().manual_seed(0)))
        counts = []
        fit(
            model,
            x,
            Delta(),
            max_iter=3,
            tol=0.0,
            callback=lambda _: counts.append(torch.get_num_threads()),
        )
        assert seen and all(entry == (2, 1) for entry in seen)
        assert counts and set(counts) == {2} and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), fused.torch_on_one_thread():
            raise RuntimeError("an error inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
