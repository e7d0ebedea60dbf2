"""The gradient M-step as an optimiser step (issue 18): its settings, warm starts, the objective
it raises, rejected steps, and an ELBO that never decreases."""

from __future__ import annotations

import copy
import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import blobs
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from inference.distributed import LOCAL
from inference.em import e_step, fit
from inference.enumerate import isolated_params
from inference.errors import MixemError
from inference.guides import Categorical, Delta, parse_guide, pyro_guide
from inference.mstep import choose_m_step, gradient_m_step
from inference.mstep_gradient import Gradient, GradientMStep, gradient_settings
from inference.mstep_objective import Objective, compact
from models import GMM, RestrictedGMM


class StudentTMixture(PyroModule):
    """A plain Pyro mixture outside the table of families: Student-t, df fixed at 3."""

    def __init__(self, locs: torch.Tensor, df: float = 3.0) -> None:
        super().__init__()
        K = locs.shape[0]
        self.n_components, self.df = K, df
        self.logits = PyroParam(torch.zeros(K, dtype=locs.dtype))
        self.locs = PyroParam(locs.clone())
        self.scales = PyroParam(torch.ones_like(locs), constraint=constraints.positive)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=self.logits))
            t = dist.StudentT(self.df, self.locs[z], self.scales[z])
            pyro.sample("x", t.to_event(1), obs=x)


def student_data(n: int, seed: int, k: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(k, (n,), generator=g)
    noise = torch.distributions.StudentT(3.0).sample((n, 1)).double()
    return labels[:, None].double() * 6 + noise


def student_model(x: torch.Tensor, k: int = 3, seed: int = 0) -> StudentTMixture:
    """Started near the generating centres (0, 6, 12), so no component is left with one point
    (where a Student-t's likelihood is unbounded as its scale goes to 0)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.rand(k, 1, generator=g, dtype=x.dtype) * 2 - 1
    return StudentTMixture(torch.arange(k, dtype=x.dtype)[:, None] * 6 + offsets)


def values(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def nondecreasing(elbos: list[float], rel: float = 1e-9) -> bool:
    return all(b >= a - rel * abs(a) for a, b in itertools.pairwise(elbos))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("family", [Delta(), Categorical()], ids=["delta", "categorical"])
def test_the_elbo_never_decreases_on_a_student_t_mixture(seed, family):
    torch.manual_seed(seed)
    x = student_data(240, seed)
    result = fit(student_model(x, seed=seed), x, family, max_iter=8, tol=0.0, m_step="gradient")
    assert nondecreasing([r.elbo for r in result.trace])


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("spec", ["delta", "categorical"])
def test_the_elbo_never_decreases_on_a_restricted_gmm(seed, spec):
    x = blobs(150, 3, 2, seed=seed)
    model = RestrictedGMM(x[:3].clone() + 0.5)
    result = fit(model, x, parse_guide(spec, 3), max_iter=8, tol=0.0, m_step=Gradient(tol=1e-9))
    assert nondecreasing([r.elbo for r in result.trace])


@pytest.mark.parametrize("spec", ["delta", "categorical"])
def test_gradient_fits_equal_closed_form_fits_on_the_restricted_gmm(spec):
    x = blobs(300, 4, 3, seed=2)
    start = x[[0, 80, 160, 240]] + 0.5
    closed = fit(RestrictedGMM(start), x, parse_guide(spec, 4), max_iter=6, tol=0.0)
    grad = fit(
        RestrictedGMM(start), x, parse_guide(spec, 4), max_iter=6, tol=0.0, m_step="gradient"
    )
    torch.testing.assert_close(grad.model.locs, closed.model.locs, rtol=0, atol=1e-6)
    assert torch.equal(grad.labels, closed.labels)


def test_gradient_fits_equal_closed_form_fits_on_a_diagonal_gmm():
    x = blobs(300, 3, 2, seed=5)
    centres, options = x[[0, 100, 200]].clone(), {"covariance_type": "diag", "reg_covar": 0.0}
    closed = fit(GMM.from_centres(centres, x, **options), x, Categorical(), max_iter=5, tol=0.0)
    grad = GMM.from_centres(centres, x, **options)
    grad = fit(grad, x, Categorical(), max_iter=5, tol=0.0, m_step="gradient")
    for name in ("weights", "locs", "covariances"):
        torch.testing.assert_close(
            getattr(grad.model, name), getattr(closed.model, name), rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("spec", ["delta", "categorical", "topk:2"])
def test_the_objective_is_pyros_elbo_less_the_entropy_with_the_same_gradient(spec):
    """E_q[log p(X, Z)] from the traces here against Pyro's TraceEnum_ELBO with q as guide."""
    x = student_data(200, seed=3)
    model = student_model(x)
    est = e_step(model, parse_guide(spec, 3), x)
    q = est.q
    dense = q.dense(3)
    entropy = float(-(torch.where(dense > 0, dense * dense.log(), dense.new_zeros(()))).sum())
    params = [p for p in model.parameters() if p.requires_grad]
    with isolated_params():
        objective = Objective(model, x, q, chunk_size=64, reducer=LOCAL, n=200)
        ours = objective.evaluate(backward=True)
        our_grads = [p.grad.clone() for p in params]  # of -f, as Pyro's loss
        for p in params:
            p.grad = None
        elbo = Trace_ELBO() if spec == "delta" else TraceEnum_ELBO(max_plate_nesting=1)
        loss = elbo.differentiable_loss(model, pyro_guide(q, 3), x)
        (loss / 200).backward()
    assert ours == pytest.approx((-float(loss.detach()) - entropy) / 200, rel=1e-12, abs=1e-12)
    for mine, theirs in zip(our_grads, params, strict=True):
        torch.testing.assert_close(mine, theirs.grad, rtol=1e-9, atol=1e-12)


def test_compact_keeps_the_log_density_and_cuts_the_broadcast_parameters():
    t = dist.StudentT(3.0, torch.zeros(4, 1, 1).double(), torch.ones(4, 1, 1).double())
    wide = t.expand((4, 50, 1)).to_event(1)
    small = compact(wide)
    assert wide.base_dist.loc.shape == (4, 50, 1) and small.base_dist.loc.shape == (4, 1, 1)
    assert small.base_dist.df.shape[1] == 1 and small.base_dist.scale.shape[1] == 1
    x = torch.randn(50, 1, dtype=torch.float64)
    torch.testing.assert_close(small.log_prob(x), wide.log_prob(x), rtol=1e-14, atol=0)
    plain = dist.Normal(torch.zeros(3), 1.0)
    assert compact(plain) is plain or compact(plain).loc.shape == plain.loc.shape


def test_warm_starts_reach_the_cold_starts_results_in_fewer_evaluations():
    x = student_data(600, seed=1)
    warm, cold = GradientMStep(Gradient()), GradientMStep(Gradient(warm_start=False))
    a = fit(student_model(x), x, Categorical(), max_iter=6, tol=0.0, m_step=warm)
    b = fit(student_model(x), x, Categorical(), max_iter=6, tol=0.0, m_step=cold)
    for name in ("locs", "scales"):
        torch.testing.assert_close(
            getattr(a.model, name), getattr(b.model, name), rtol=0, atol=1e-6
        )
    later = lambda m: sum(r.evaluations for r in m.reports[1:])  # noqa: E731
    assert later(warm) < later(cold)
    assert all(r.accepted for r in warm.reports)


def test_each_warm_step_lands_within_1e_6_of_the_exact_m_step():
    x = student_data(500, seed=4)
    model = student_model(x)
    step = GradientMStep(Gradient())
    for _ in range(4):
        est = e_step(model, Categorical(), x)
        exact = copy.deepcopy(model)
        for _ in range(3):  # converged as far as L-BFGS goes
            GradientMStep(Gradient(max_steps=300, tol=0.0)).step(exact, x, est.q)
        step(model, x, est)
        with isolated_params():
            for name in ("locs", "scales"):
                torch.testing.assert_close(
                    getattr(model, name), getattr(exact, name), rtol=0, atol=1e-6
                )


def test_a_step_that_would_lower_the_objective_is_rejected_bit_for_bit():
    x = student_data(200, seed=2)
    model = student_model(x)
    est = e_step(model, Delta(), x)
    before = values(model)
    bad = GradientMStep(Gradient(max_steps=1, line_search="none", lr=1e6))
    report = bad.step(model, x, est.q)
    assert report is not None and not report.accepted and report.after == report.before
    after = values(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    good = GradientMStep(Gradient()).step(model, x, est.q)  # the same q, a sound optimiser
    assert good is not None and good.accepted and good.after > good.before


def test_max_steps_bounds_the_evaluations():
    x = student_data(200, seed=2)
    model = student_model(x)
    est = e_step(model, Categorical(), x)
    report = GradientMStep(Gradient(max_steps=2)).step(model, x, est.q)
    assert report is not None and report.evaluations <= 3  # 2 * 5 // 4 + the first


def test_gradient_m_step_keeps_its_signature_and_returns_the_objective():
    x = blobs(80, 2, 2, seed=0)
    model = RestrictedGMM(x[:2].clone())
    est = e_step(model, Delta(), x)
    value = gradient_m_step(model, x, est.q, max_steps=50)
    assert value > est.point_fit.sum().item() / 80


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Gradient(max_steps=0), "max_steps must be an integer >= 1, got 0"),
        (Gradient(max_steps=2.5), "max_steps must be an integer >= 1, got 2.5"),  # type: ignore[arg-type]
        (Gradient(tol=-1.0), "tol must be a finite number >= 0, got -1.0"),
        (Gradient(tol=float("nan")), "tol must be a finite number >= 0, got nan"),
        (Gradient(line_search="armijo"), "line_search must be one of strong_wolfe, none"),
        (Gradient(lr=0.0), "lr must be a finite number > 0, got 0.0"),
        (Gradient(warm_start=1), "warm_start must be True or False, got 1"),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_are_one_line_errors_before_the_fit_runs(settings, message):
    x = blobs(40, 2, 2, seed=0)
    with pytest.raises(MixemError, match=message) as caught:
        fit(RestrictedGMM(x[:2].clone()), x, max_iter=2, m_step=settings)
    assert "\n" not in str(caught.value)


def test_options_as_a_dict_are_checked_by_name():
    assert gradient_settings({"max_steps": 5, "tol": 1e-6}) == Gradient(max_steps=5, tol=1e-6)
    assert gradient_settings(None) == Gradient()
    with pytest.raises(MixemError, match="unknown m_step_options steps; the gradient M-step takes"):
        gradient_settings({"steps": 5})
    with pytest.raises(MixemError, match="m_step_options must be a dict"):
        gradient_settings([5])


def test_choose_m_step_binds_one_optimiser_per_fit():
    x = blobs(40, 2, 2, seed=0)
    model = RestrictedGMM(x[:2].clone())
    first = choose_m_step(model, x, Gradient(max_steps=7), 16, LOCAL)
    assert isinstance(first, GradientMStep) and first.settings.max_steps == 7
    assert choose_m_step(model, x, "gradient", 16, LOCAL) is not first
