"""Properties of variational EM over random shapes, seeds, dtypes and guide families (hypothesis).

Run quickly (and deterministically) in `make test`; `make test-long` runs many more examples.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from conftest import blobs
from hypothesis import given
from hypothesis import strategies as st

from inference.em import e_step, fit
from inference.guides import parse_guide
from inference.init import kmeans_plusplus, random_points
from inference.params import get_params
from models import RestrictedGMM

# Families whose E-step is the exact argmax of the ELBO within the family, so EM never lowers it
# (tempered and sampled E-steps do not maximise the ELBO and are left out of that property).
EXACT = ["delta", "categorical", "topk:2"]
ALL = [*EXACT, "tempered:0.5", "sampled"]


class Problem(NamedTuple):
    """x: (N, D) data; k: K; init: (K, D) starting means."""

    x: torch.Tensor
    k: int
    init: torch.Tensor


def _slack(value: float, x: torch.Tensor) -> float:
    """Rounding allowance for comparing sums of log-densities of the points ``x`` (N, D) of
    total ~``value``: each entry comes from the expanded form x.mu - |mu|^2/2 - |x|^2/2, whose
    rounding is relative to the squared norms it cancels (about the data's spread)."""
    eps = torch.finfo(x.dtype).eps
    spread = float((x.double() - x.double().mean(0)).square().sum()) / 2
    return 8 * eps * (abs(value) + x.numel() + spread)


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 4))
    k = draw(st.integers(1, min(n, 6)))
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    spread = draw(st.sampled_from([0.05, 1.0, 4.0]))
    x = blobs(n, draw(st.integers(1, 5)), d, seed=seed, dtype=dtype, spread=spread)
    if draw(st.booleans()):  # duplicated rows: ties, empty components, K close to distinct N
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randint(max(1, n // 3), (n,), generator=g)]
    g = torch.Generator().manual_seed(seed + 1)
    init = kmeans_plusplus(x, k, g) if draw(st.booleans()) else random_points(x, k, g)
    return Problem(x, k, init)


def _guide(spec: str, k: int):
    """The family, with topk's k clipped to K (topk:k needs k <= K)."""
    if spec.startswith("topk:"):
        spec = f"topk:{min(int(spec[5:]), k)}"
    return parse_guide(spec, k)


@given(problems(), st.sampled_from(EXACT))
def test_exact_steps_never_lower_the_elbo(problem, spec):
    x, k, init = problem
    result = fit(RestrictedGMM(init), x, _guide(spec, k), max_iter=12, tol=0.0)
    for before, after in itertools.pairwise(result.trace):
        if after.n_relocated > 0:  # refilling an empty component may lower the ELBO
            continue
        slack = _slack(before.elbo, x)
        assert after.elbo >= before.elbo - slack, (before, after)


@given(problems(), st.sampled_from([0.0, 1e-4]))
def test_hard_em_terminates(problem, tol):
    """Lloyd's iterations reach a fixed point in a few steps, duplicates and K = N included
    (where refilling empty components used to cycle for ever, as in scikit-learn #28055)."""
    x, k, init = problem
    result = fit(RestrictedGMM(init), x, parse_guide("delta", k), max_iter=100, tol=tol)
    assert result.converged, [(r.n_changed, r.n_relocated, r.elbo) for r in result.trace[-4:]]


@given(problems(), st.sampled_from(ALL))
def test_fit_is_well_formed(problem, spec):
    x, k, init = problem
    guide = _guide(spec, k)
    result = fit(RestrictedGMM(init), x, guide, max_iter=12, tol=0.0)
    n = x.shape[0]
    for record in result.trace:  # ELBO <= log evidence, the gap is a KL
        slack = _slack(record.log_evidence, x)
        assert record.elbo <= record.log_evidence + slack
        assert record.kl_gap >= -slack
    assert result.labels.shape == (n,) and result.labels.dtype == torch.int64
    assert int(result.labels.min()) >= 0 and int(result.labels.max()) < k
    assert all(bool(torch.isfinite(v).all()) for v in get_params(result.model).values())
    torch.testing.assert_close(result.q.weights.sum(1), torch.ones(n, dtype=x.dtype))
    if spec != "sampled":  # labels are those of an E-step under the final parameters
        again = e_step(result.model, guide, x)
        assert torch.equal(again.labels, result.labels)


@given(problems())
def test_families_are_ordered_at_fixed_parameters(problem):
    """ELBO(delta) <= ELBO(topk:j) <= ELBO(topk:j+1) <= ELBO(categorical) = log evidence."""
    x, k, init = problem
    model = RestrictedGMM(init)
    specs = ["delta", *[f"topk:{j}" for j in range(1, k + 1)], "categorical"]
    steps = [e_step(model, parse_guide(s, k), x) for s in specs]
    slack = _slack(steps[-1].log_evidence, x)
    for a, b in itertools.pairwise(steps):
        assert a.elbo <= b.elbo + slack
    assert steps[-1].elbo <= steps[-1].log_evidence + slack
    if "categorical" in specs:
        assert abs(steps[-1].elbo - steps[-1].log_evidence) <= slack
