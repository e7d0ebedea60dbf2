"""inference.expfam: the exponential-family form of an enumerated site equals its log_prob.

Each case is a small plain Pyro mixture; its observed site, traced with "z" enumerated in
parallel (not under no_grad, so requires_grad tells fixed from learned parameters), must give
the same (n, K) table as one GEMM as ``fn.log_prob(x).T``, in float64 to 1e-10 relative.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import Tensor
from torch.nn.functional import one_hot

from inference.expfam import TABLE, ExpFamForm, recognise
from models.vmf import VonMisesFisher

K, N, D, C = 3, 7, 4, 5
F64 = torch.float64


def site(component: Callable[[Tensor], object], x: Tensor, k: int = K) -> object:
    """The distribution of site "x" of a K-mixture of ``component(z)``, z enumerated."""

    def model(x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(torch.ones(k, dtype=F64) / k))
            pyro.sample("x", component(z), obs=x)

    config = poutine.infer_config(
        model, lambda s: {"enumerate": "parallel"} if s["name"] == "z" else {}
    )
    trace = poutine.trace(poutine.enum(config, first_available_dim=-2)).get_trace(x)
    return trace.nodes["x"]["fn"]


def table(form: ExpFamForm, x: Tensor) -> Tensor:
    """(n, K) by the form's one matrix product."""
    return (
        form.statistic(x) @ form.natural.T - form.log_normaliser + form.base_log_measure(x)[:, None]
    )


def assert_table(fn, form: ExpFamForm | None, x: Tensor, rtol: float = 1e-10) -> None:
    assert form is not None
    expected = fn.log_prob(x).T
    got = table(form, x)
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * scale)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, g: torch.Generator) -> Tensor:
    return torch.rand(*shape, generator=g, dtype=F64)


def randn(*shape: int, g: torch.Generator) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=F64)


def spd(g: torch.Generator, batch: tuple[int, ...] = ()) -> Tensor:
    """Random symmetric positive definite (*batch, D, D)."""
    a = randn(*batch, D, D, g=g)
    return a @ a.mT + D * torch.eye(D, dtype=F64)


def learned(t: Tensor) -> Tensor:
    return t.clone().requires_grad_()


# Each case: name -> g -> (component(z), x, family, F). F = None skips the width check.
def _normal_fixed(g):
    locs = randn(K, D, g=g) * 3
    return lambda z: dist.Normal(locs[z], 1.0).to_event(1), randn(N, D, g=g), "normal", D


def _normal_fixed_shared_vector(g):
    locs, scale = randn(K, D, g=g), rand(D, g=g) + 0.5
    return lambda z: dist.Normal(locs[z], scale).to_event(1), randn(N, D, g=g), "normal", D


def _normal_learned_shared(g):
    locs, scale = learned(randn(K, D, g=g)), learned(torch.tensor(1.5, dtype=F64))
    return lambda z: dist.Normal(locs[z], scale).to_event(1), randn(N, D, g=g), "normal", 2 * D


def _normal_per_component(g):
    locs, scales = randn(K, D, g=g), rand(K, D, g=g) + 0.5
    return lambda z: dist.Normal(locs[z], scales[z]).to_event(1), randn(N, D, g=g), "normal", 2 * D


def _normal_1d(g):
    locs, scales = randn(K, g=g), rand(K, g=g) + 0.5
    return lambda z: dist.Normal(locs[z], scales[z]), randn(N, g=g), "normal", 2


def _normal_1d_fixed(g):
    locs = randn(K, g=g)
    return lambda z: dist.Normal(locs[z], 2.0), randn(N, g=g), "normal", 1


def _mvn_tril(g):
    locs, tril = randn(K, D, g=g), torch.linalg.cholesky(spd(g, (K,)))
    return (
        lambda z: dist.MultivariateNormal(locs[z], scale_tril=tril[z]),
        randn(N, D, g=g),
        "mvn",
        D + D * (D + 1) // 2,
    )


def _mvn_cov(g):
    locs, cov = randn(K, D, g=g), spd(g, (K,))
    return (
        lambda z: dist.MultivariateNormal(locs[z], covariance_matrix=cov[z]),
        randn(N, D, g=g),
        "mvn",
        D + D * (D + 1) // 2,
    )


def _mvn_precision(g):
    locs, prec = randn(K, D, g=g), spd(g, (K,))
    return (
        lambda z: dist.MultivariateNormal(locs[z], precision_matrix=prec[z]),
        randn(N, D, g=g),
        "mvn",
        D + D * (D + 1) // 2,
    )


def _mvn_shared_fixed(g):
    locs, cov = randn(K, D, g=g), spd(g)
    return lambda z: dist.MultivariateNormal(locs[z], cov), randn(N, D, g=g), "mvn", D


def _mvn_shared_fixed_precision(g):
    locs, prec = randn(K, D, g=g), spd(g)
    return (
        lambda z: dist.MultivariateNormal(locs[z], precision_matrix=prec),
        randn(N, D, g=g),
        "mvn",
        D,
    )


def _mvn_shared_learned(g):
    locs, cov = randn(K, D, g=g), learned(spd(g))
    return (
        lambda z: dist.MultivariateNormal(locs[z], cov),
        randn(N, D, g=g),
        "mvn",
        D + D * (D + 1) // 2,
    )


def _bits(g, *shape):
    return torch.bernoulli(torch.full(shape, 0.5, dtype=F64), generator=g)


def _bernoulli_probs(g):
    p = rand(K, D, g=g) * 0.9 + 0.05
    return lambda z: dist.Bernoulli(probs=p[z]).to_event(1), _bits(g, N, D), "bernoulli", D


def _bernoulli_logits(g):
    logits = learned(randn(K, D, g=g) * 2)
    return lambda z: dist.Bernoulli(logits=logits[z]).to_event(1), _bits(g, N, D), "bernoulli", D


def _bernoulli_1d(g):
    p = rand(K, g=g) * 0.9 + 0.05
    return lambda z: dist.Bernoulli(p[z]), _bits(g, N), "bernoulli", 1


def _binomial(g):
    p = rand(K, D, g=g) * 0.9 + 0.05
    x = torch.randint(0, 6, (N, D), generator=g).to(F64)
    return lambda z: dist.Binomial(5, probs=p[z]).to_event(1), x, "binomial", D


def _binomial_per_feature_total(g):
    logits, total = randn(K, D, g=g), torch.tensor([5.0, 7.0, 9.0, 11.0], dtype=F64)
    x = torch.randint(0, 6, (N, D), generator=g).to(F64)
    return lambda z: dist.Binomial(total, logits=logits[z]).to_event(1), x, "binomial", D


def _poisson(g):
    rate = learned(rand(K, D, g=g) * 5 + 0.1)
    x = torch.poisson(torch.full((N, D), 3.0, dtype=F64), generator=g)
    return lambda z: dist.Poisson(rate[z]).to_event(1), x, "poisson", D


def _poisson_1d(g):
    rate = rand(K, g=g) * 5 + 0.1
    x = torch.poisson(torch.full((N,), 3.0, dtype=F64), generator=g)
    return lambda z: dist.Poisson(rate[z]), x, "poisson", 1


def _categorical_probs(g):
    p = rand(K, D, C, g=g) + 0.1
    x = torch.randint(0, C, (N, D), generator=g)
    return lambda z: dist.Categorical(probs=p[z]).to_event(1), x, "categorical", D * C


def _categorical_logits_1d(g):
    logits = learned(randn(K, C, g=g))
    x = torch.randint(0, C, (N,), generator=g)
    return lambda z: dist.Categorical(logits=logits[z]), x, "categorical", C


def _onehot(g):
    p = rand(K, C, g=g) + 0.1
    x = one_hot(torch.randint(0, C, (N,), generator=g), C).to(F64)
    return lambda z: dist.OneHotCategorical(probs=p[z]), x, "onehot_categorical", C


def _onehot_logits(g):
    logits = randn(K, C, g=g)
    x = one_hot(torch.randint(0, C, (N,), generator=g), C).to(F64)
    return lambda z: dist.OneHotCategorical(logits=logits[z]), x, "onehot_categorical", C


def _positive(g, *shape):
    return rand(*shape, g=g) * 3 + 0.05


def _gamma(g):
    a, b = learned(_positive(g, K, D)), _positive(g, K, D)
    return lambda z: dist.Gamma(a[z], b[z]).to_event(1), _positive(g, N, D), "gamma", 2 * D


def _gamma_fixed_shape(g):
    b = learned(_positive(g, K, D))
    return lambda z: dist.Gamma(2.5, b[z]).to_event(1), _positive(g, N, D), "gamma", D


def _gamma_1d(g):
    a, b = _positive(g, K), _positive(g, K)
    return lambda z: dist.Gamma(a[z], b[z]), _positive(g, N), "gamma", 2


def _exponential(g):
    b = _positive(g, K, D)
    return lambda z: dist.Exponential(b[z]).to_event(1), _positive(g, N, D), "exponential", D


def _exponential_1d(g):
    b = learned(_positive(g, K))
    return lambda z: dist.Exponential(b[z]), _positive(g, N), "exponential", 1


def _unit(g):
    return rand(N, D, g=g) * 0.98 + 0.01


def _beta(g):
    a, b = learned(_positive(g, K, D)), _positive(g, K, D)
    return lambda z: dist.Beta(a[z], b[z]).to_event(1), _unit(g), "beta", 2 * D


def _beta_1d_fixed_b(g):
    a = _positive(g, K)
    return lambda z: dist.Beta(a[z], 2.0), _unit(g)[:, 0], "beta", 1


def _directions(g, *shape):
    v = randn(*shape, g=g)
    return v / v.norm(dim=-1, keepdim=True)


def _vmf(g):
    mu, kappa = _directions(g, K, D), learned(rand(K, g=g) * 10 + 0.5)
    return lambda z: VonMisesFisher(mu[z], kappa[z]), _directions(g, N, D), "vmf", D


def _vmf_shared(g):
    mu, kappa = learned(_directions(g, K, D)), torch.tensor(4.0, dtype=F64)
    return lambda z: VonMisesFisher(mu[z], kappa), _directions(g, N, D), "vmf", D


CASES = {f.__name__[1:]: f for f in [
    _normal_fixed, _normal_fixed_shared_vector, _normal_learned_shared, _normal_per_component,
    _normal_1d, _normal_1d_fixed, _mvn_tril, _mvn_cov, _mvn_precision, _mvn_shared_fixed,
    _mvn_shared_fixed_precision, _mvn_shared_learned, _bernoulli_probs, _bernoulli_logits,
    _bernoulli_1d, _binomial, _binomial_per_feature_total, _poisson, _poisson_1d,
    _categorical_probs, _categorical_logits_1d, _onehot, _onehot_logits, _gamma,
    _gamma_fixed_shape, _gamma_1d, _exponential, _exponential_1d, _beta, _beta_1d_fixed_b,
    _vmf, _vmf_shared,
]}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_table_equals_log_prob(name):
    component, x, family, width = CASES[name](gen(zlib.crc32(name.encode())))
    fn = site(component, x)
    form = recognise(fn, K)
    assert form is not None and form.family == family
    assert form.natural.shape == (K, width)
    assert form.log_normaliser.shape == (K,)
    assert_table(fn, form, x)
    if form.linear:  # T(x) is the data less the shift: a kernel may read x directly
        rows = x.reshape(N, -1) - (0 if form.shift is None else form.shift)
        torch.testing.assert_close(form.statistic(x), rows, rtol=0, atol=0)
    # only the categorical's statistics are one-hot codes; T is their one-hot exactly
    assert (form.codes_of is not None) == (family == "categorical")
    # only the Normal with its scales kept has T = (x - r, (x - r)^2), in that order
    assert form.squares == (family == "normal" and not form.linear)
    if form.squares:
        assert form.shift is not None
        y = x.reshape(N, -1).to(form.natural) - form.shift
        assert width == 2 * y.shape[1]
        torch.testing.assert_close(form.statistic(x), torch.cat([y, y * y], 1), rtol=0, atol=0)
    if form.codes_of is not None:
        codes = form.codes_of(x)
        assert codes.dtype == torch.int32 and codes.shape[0] == N
        C_ = width // codes.shape[1]
        hot = one_hot(codes.long(), C_).reshape(N, width).to(form.natural)
        assert torch.equal(form.statistic(x), hot)


@pytest.mark.parametrize(
    ("name", "linear"),
    [("normal_fixed", True), ("mvn_shared_fixed", True), ("normal_per_component", False),
     ("mvn_tril", False), ("poisson", True), ("categorical_probs", False),
     ("gamma_fixed_shape", True), ("beta", False)],
)  # fmt: skip
def test_linear_flag(name, linear):
    component, x, _, _ = CASES[name](gen())
    form = recognise(site(component, x), K)
    assert form is not None and form.linear == linear


def test_every_table_family_has_a_case():
    families = {convert.__name__ for convert in TABLE.values()}
    covered = {CASES[name](gen())[2] for name in CASES}
    assert families | {"vmf"} == covered


def test_learned_parameters_keep_their_gradients():
    """The table's gradient is log_prob's: natural and log_normaliser carry the graph."""
    g = gen(1)
    locs, scales = learned(randn(K, D, g=g)), learned(rand(K, D, g=g) + 0.5)
    x = randn(N, D, g=g)
    fn = site(lambda z: dist.Normal(locs[z], scales[z]).to_event(1), x)
    form = recognise(fn, K)
    assert form is not None
    want = torch.autograd.grad(fn.log_prob(x).sum(), (locs, scales), retain_graph=True)
    got = torch.autograd.grad(table(form, x).sum(), (locs, scales))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_far_from_origin_float64():
    g = gen(2)
    locs, scales = 1e6 + randn(K, D, g=g), rand(K, D, g=g) + 0.5
    x = 1e6 + randn(N, D, g=g)
    for component in (
        lambda z: dist.Normal(locs[z], scales[z]).to_event(1),
        lambda z: dist.Normal(locs[z], 1.0).to_event(1),
        lambda z: dist.MultivariateNormal(locs[z], spd(gen(3), (K,))[z]),
    ):
        fn = site(component, x)
        assert_table(fn, recognise(fn, K), x)
        r = x.mean(0)
        form = recognise(fn, K, shift=r)
        assert form is not None and torch.equal(form.shift, r)
        assert_table(fn, form, x)


@pytest.mark.parametrize("family", ["normal", "mvn"])
def test_shift_keeps_float32_accurate(family):
    """Data at 1e5 in float32: the shifted GEMM is accurate, the unshifted one is not."""
    g = gen(4)
    locs64 = (1e5 + randn(K, D, g=g)).float().double()
    x = (1e5 + randn(N, D, g=g)).float()
    cov = spd(g, (K,))

    def component(locs: Tensor, dtype: torch.dtype):
        if family == "normal":
            return lambda z: dist.Normal(locs[z], torch.ones((), dtype=dtype)).to_event(1)
        return lambda z: dist.MultivariateNormal(locs[z], cov.to(dtype)[z])

    exact = site(component(locs64, F64), x.double()).log_prob(x.double()).T
    fn32 = site(component(locs64.float(), torch.float32), x)
    shifted = recognise(fn32, K)
    unshifted = recognise(fn32, K, shift=torch.zeros(D))
    assert shifted is not None and unshifted is not None
    assert (table(shifted, x).double() - exact).abs().max() < 1e-3
    assert (table(unshifted, x).double() - exact).abs().max() > 1.0


def _weighted(q: Tensor, values: Tensor) -> Tensor:
    """sum_i q_ic values_i: (K, *values.shape[1:])."""
    return torch.einsum("ik,i...->k...", q, values)


def _expected_moments(family: str, x: Tensor, form: ExpFamForm, q: Tensor) -> dict[str, Tensor]:
    x2 = x.reshape(x.shape[0], -1)
    if family in ("normal", "mvn"):
        assert form.shift is not None
        y = x2 - form.shift
        out = {"sum_dx": _weighted(q, y), "shift": form.shift}
        if form.natural.shape[1] > D:
            square = y * y if family == "normal" else y[:, :, None] * y[:, None, :]
            out["sum_dxdx"] = _weighted(q, square)
        return out
    if family == "categorical":
        return {"sum_onehot": _weighted(q, one_hot(x2, C).to(F64))}
    if family == "gamma":
        return {"sum_x": _weighted(q, x2), "sum_log_x": _weighted(q, x2.log())}
    if family == "beta":
        return {"sum_log_x": _weighted(q, x2.log()), "sum_log1m_x": _weighted(q, (1 - x2).log())}
    return {"sum_x": _weighted(q, x2)}


MOMENT_CASES = [
    "normal_per_component", "normal_fixed", "mvn_tril", "mvn_shared_fixed", "bernoulli_probs",
    "binomial", "poisson", "categorical_probs", "onehot", "gamma", "exponential", "beta", "vmf",
]  # fmt: skip


@pytest.mark.parametrize("name", MOMENT_CASES)
def test_moments_are_the_weighted_sums(name):
    g = gen(5)
    component, x, family, _ = CASES[name](g)
    form = recognise(site(component, x), K)
    assert form is not None
    q = torch.softmax(randn(N, K, g=g), 1)
    got = form.moments(q.T @ form.statistic(x))
    want = _expected_moments(family, x, form, q)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12)


def test_folded_gamma_shape_drops_its_moment():
    component, x, _, _ = CASES["gamma_fixed_shape"](gen(6))
    form = recognise(site(component, x), K)
    assert form is not None
    assert set(form.moments(form.statistic(x).sum(0).expand(K, -1))) == {"sum_x"}


class MyDistribution(dist.TorchDistribution):
    """A user's own distribution: not an exponential family this package knows."""

    arg_constraints: dict = {}  # noqa: RUF012
    support = dist.constraints.real

    def __init__(self, loc: Tensor) -> None:
        self.loc = loc
        super().__init__(loc.shape[:-1], loc.shape[-1:])

    def log_prob(self, value: Tensor) -> Tensor:
        return -(value - self.loc).abs().sum(-1)


class MyNormal(dist.Normal):
    """A subclass may change log_prob: exact types only."""


def _none_cases(g):
    locs, x = randn(K, D, g=g), randn(N, D, g=g)
    scale = rand(N, D, g=g) + 0.5
    per_point_cov = spd(g, (N,))
    per_component_total = torch.tensor([5.0, 6.0, 7.0], dtype=F64)[:, None].expand(K, D)
    return {
        "student_t": (lambda z: dist.StudentT(3.0, locs[z], 1.0).to_event(1), x),
        "laplace": (lambda z: dist.Laplace(locs[z], 1.0).to_event(1), x),
        "tensor_mask": (
            lambda z: dist.Normal(locs[z], 1.0).to_event(1).mask(torch.ones(N, dtype=torch.bool)),
            x,
        ),
        "false_mask": (lambda z: dist.Normal(locs[z], 1.0).to_event(1).mask(False), x),
        "per_point_scale": (lambda z: dist.Normal(locs[z], scale).to_event(1), x),
        "per_point_cov": (lambda z: dist.MultivariateNormal(locs[z], per_point_cov), x),
        "user_distribution": (lambda z: MyDistribution(locs[z]), x),
        "subclass": (lambda z: MyNormal(locs[z], 1.0).to_event(1), x),
        "binomial_per_component_total": (
            lambda z: dist.Binomial(per_component_total[z], probs=0.5).to_event(1),
            torch.ones(N, D, dtype=F64),
        ),
        "binomial_learned_total": (
            lambda z: dist.Binomial(
                learned(torch.tensor(5.0, dtype=F64)), rand(K, D, g=g)[z]
            ).to_event(1),
            torch.ones(N, D, dtype=F64),
        ),
        "not_indexed_by_z": (lambda z: dist.Normal(torch.zeros(D, dtype=F64), 1.0).to_event(1), x),
        "two_reinterpreted_dims": (
            lambda z: dist.Normal(locs[z].reshape(-1, 1, 2, 2), 1.0).to_event(2),
            x.reshape(N, 2, 2),
        ),
    }


@pytest.mark.parametrize("name", list(_none_cases(gen())))
def test_not_recognised(name):
    component, x = _none_cases(gen(7))[name]
    assert recognise(site(component, x), K) is None


def test_bool_true_mask_is_recognised():
    locs, x = randn(K, D, g=gen(8)), randn(N, D, g=gen(9))
    fn = site(lambda z: dist.Normal(locs[z], 1.0).to_event(1).mask(True), x)
    assert_table(fn, recognise(fn, K), x)


def test_bad_arguments_give_none():
    locs, x = randn(K, D, g=gen(10)), randn(N, D, g=gen(11))
    fn = site(lambda z: dist.Normal(locs[z], 1.0).to_event(1), x)
    assert recognise(fn, K + 1) is None
    assert recognise(fn, K, shift=torch.zeros(D + 1, dtype=F64)) is None
    assert recognise("not a distribution", K) is None
    assert recognise(dist.Normal(0.0, 1.0), K) is None


def test_single_row_trace():
    """A trace of one row (batch (K, 1)) is recognised and its form applies to any n."""
    locs = randn(K, D, g=gen(12))
    fn1 = site(lambda z: dist.Normal(locs[z], 1.0).to_event(1), randn(1, D, g=gen(13)))
    form = recognise(fn1, K)
    x = randn(N, D, g=gen(14))
    fn = site(lambda z: dist.Normal(locs[z], 1.0).to_event(1), x)
    assert form is not None
    torch.testing.assert_close(table(form, x), fn.log_prob(x).T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["bernoulli_probs", "mvn_tril", "categorical_probs", "onehot"])
def test_recognised_after_lazy_parameters_are_touched(name):
    """log_prob (or a property) materialises lazy parameters per point; the form reads the
    parameters the distribution was built from, so it is unaffected."""
    component, x, _, _ = CASES[name](gen(15))
    fn = site(component, x)
    fn.log_prob(x)
    leaf = fn
    while hasattr(leaf, "base_dist"):
        leaf = leaf.base_dist
    leaf = getattr(leaf, "_categorical", leaf)  # OneHotCategorical keeps its parameters there
    for attr in ("logits", "probs", "precision_matrix", "covariance_matrix", "scale_tril"):
        getattr(leaf, attr, None)
    assert {"logits", "probs"} <= set(vars(leaf)) or "precision_matrix" in vars(leaf)
    assert_table(fn, recognise(fn, K), x)
