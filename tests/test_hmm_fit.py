"""fit_hmm against hmmlearn's Baum-Welch and against a hand-written Viterbi training; the ELBO
traces' guarantees; the M-steps of every emission."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from hmmlearn.hmm import CategoricalHMM, GaussianHMM, PoissonHMM

from inference.hmm import fit_hmm, read_chain
from inference.init import kmeans_plusplus
from models.hmm import HMM

F64 = torch.float64
LENGTHS = [70, 45, 1, 84]


@pytest.fixture(autouse=True)
def _one_thread():
    """The chain's loops run many small tensor operations, which a second thread only slows."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=F64)


def gaussian_data(seed: int, lengths=LENGTHS, K: int = 3, D: int = 2):
    """Sequences from a sticky 3-state Gaussian chain: (X (N, D), means (K, D))."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, D)) * 4
    trans = np.full((K, K), 0.1 / (K - 1)) + np.eye(K) * (0.9 - 0.1 / (K - 1))
    rows = []
    for n in lengths:
        z = rng.integers(K)
        for _ in range(n):
            rows.append(means[z] + rng.normal(size=D))
            z = rng.choice(K, p=trans[z])
    return np.array(rows), means


def start_values(seed: int, cov: str, K: int = 3, D: int = 2):
    rng = np.random.default_rng(100 + seed)
    start = rng.dirichlet(np.ones(K) * 2)
    trans = rng.dirichlet(np.ones(K) * 2, size=K)
    means = rng.normal(size=(K, D)) * 3
    if cov == "diag":
        covars = rng.uniform(0.5, 2.0, size=(K, D))
    else:
        a = rng.normal(size=(K, D, D))
        covars = a @ a.transpose(0, 2, 1) + np.eye(D)
    return start, trans, means, covars


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_categorical_guide_is_hmmlearn_baum_welch(cov):
    X, _ = gaussian_data(0)
    start, trans, means, covars = start_values(0, cov)
    n_iter = 12
    ref = GaussianHMM(3, covariance_type=cov, init_params="", params="stmc", n_iter=n_iter,
                      tol=-np.inf)  # fmt: skip
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = start, trans, means, covars
    ref.fit(X, LENGTHS)
    model = HMM(t(start), t(trans), covariance_type=cov, locs=t(means), covariances=t(covars))
    result = fit_hmm(model, t(X), LENGTHS, "categorical", max_iter=n_iter, tol=0)
    ours = np.array([r.elbo for r in result.trace[:n_iter]])
    history = np.array(ref.monitor_.history)
    assert len(history) == n_iter and result.n_iter == n_iter
    assert np.abs(ours / history - 1).max() < 1e-9
    assert all(r.kl_gap == 0 for r in result.trace)
    fitted = model.params()
    pairs = [("startprob", ref.startprob_), ("transmat", ref.transmat_), ("locs", ref.means_),
             ("covariances", ref._covars_)]  # fmt: skip
    for name, theirs in pairs:
        np.testing.assert_allclose(fitted[name].numpy(), theirs, rtol=1e-8, atol=1e-12)
    logprob, path = ref.decode(X, LENGTHS, algorithm="viterbi")
    decoded = fit_hmm(model, t(X), LENGTHS, "delta", max_iter=0)
    assert np.array_equal(decoded.labels.numpy(), path)
    assert abs(decoded.trace[0].elbo - logprob) < 1e-9 * abs(logprob)


def test_poisson_and_categorical_emissions_are_hmmlearn():
    rng = np.random.default_rng(3)
    lengths = [60, 40]
    states = rng.integers(2, size=100)
    counts = rng.poisson(np.array([1.0, 6.0])[states][:, None] * np.ones((1, 2)))
    start, trans = np.array([0.6, 0.4]), np.array([[0.8, 0.2], [0.3, 0.7]])
    rates = np.array([[2.0, 1.5], [4.0, 5.0]])
    ref = PoissonHMM(2, init_params="", n_iter=8, tol=-np.inf)
    ref.startprob_, ref.transmat_, ref.lambdas_ = start, trans, rates
    ref.fit(counts, lengths)
    model = HMM(t(start), t(trans), "poisson", rates=t(rates))
    result = fit_hmm(model, t(counts), lengths, "categorical", max_iter=8, tol=0)
    assert (
        np.abs(np.array([r.elbo for r in result.trace[:8]]) / ref.monitor_.history - 1).max() < 1e-9
    )
    np.testing.assert_allclose(model.rates.detach().numpy(), ref.lambdas_, rtol=1e-8)
    codes = (counts[:, :1] % 3).astype(int)
    emission = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    cref = CategoricalHMM(2, init_params="", n_iter=8, tol=-np.inf)
    cref.startprob_, cref.transmat_, cref.emissionprob_ = start, trans, emission
    cref.fit(codes, lengths)
    cmodel = HMM(t(start), t(trans), "categorical", probs=t(emission)[:, None, :])
    cres = fit_hmm(cmodel, t(codes), lengths, "categorical", max_iter=8, tol=0)
    assert (
        np.abs(np.array([r.elbo for r in cres.trace[:8]]) / cref.monitor_.history - 1).max() < 1e-9
    )
    np.testing.assert_allclose(cmodel.probs.detach()[:, 0].numpy(), cref.emissionprob_, rtol=1e-8)


def numpy_viterbi(X, lengths, start, trans, means, var):
    """Reference Viterbi in numpy, one sequence at a time (diag Gaussian emissions)."""
    log_emit = -0.5 * (((X[:, None, :] - means) ** 2) / var + np.log(2 * np.pi * var)).sum(-1)
    with np.errstate(divide="ignore"):
        ls, lt = np.log(start), np.log(trans)
    path, offset = [], 0
    for n in lengths:
        e = log_emit[offset : offset + n]
        delta, back = ls + e[0], np.zeros((n, len(start)), dtype=int)
        for step in range(1, n):
            scores = delta[:, None] + lt
            back[step] = scores.argmax(0)
            delta = scores.max(0) + e[step]
        seq = [int(delta.argmax())]
        for step in range(n - 1, 0, -1):
            seq.append(int(back[step, seq[-1]]))
        path += seq[::-1]
        offset += n
    return np.array(path)


def numpy_viterbi_training(X, lengths, start, trans, means, var, prior, max_iter=50):
    """Hard EM on the Viterbi path: counts along the path, hmmlearn's diag covariance update."""
    K = len(start)
    firsts = np.cumsum([0, *lengths[:-1]])
    path = numpy_viterbi(X, lengths, start, trans, means, var)
    for _ in range(max_iter):
        onehot = np.eye(K)[path]
        start = onehot[firsts].sum(0) / len(lengths)
        inner = np.setdiff1d(np.arange(len(X)), firsts)
        counts = np.zeros((K, K))
        np.add.at(counts, (path[inner - 1], path[inner]), 1)
        rows = counts.sum(1, keepdims=True)
        trans = np.where(rows > 0, counts / np.maximum(rows, 1), trans)
        n = onehot.sum(0)[:, None]
        new_means = onehot.T @ X / np.maximum(n, 1)
        new_var = (prior + onehot.T @ (X**2) - 2 * new_means * (onehot.T @ X)
                   + new_means**2 * n) / np.maximum(n, 1e-5)  # fmt: skip
        means = np.where(n > 0, new_means, means)
        var = np.where(n > 0, new_var, var)
        new_path = numpy_viterbi(X, lengths, start, trans, means, var)
        if np.array_equal(new_path, path):
            break
        path = new_path
    return path, start, trans, means, var


def test_delta_guide_is_viterbi_training():
    X, _ = gaussian_data(1)
    start, trans, means, var = start_values(1, "diag")
    ref = numpy_viterbi_training(X, LENGTHS, start, trans, means, var, prior=1e-2)
    model = HMM(t(start), t(trans), locs=t(means), covariances=t(var))
    result = fit_hmm(model, t(X), LENGTHS, "delta", max_iter=50)
    assert result.stop_reason == "assignments unchanged"
    assert np.array_equal(result.labels.numpy(), ref[0])
    fitted = model.params()
    for name, theirs in zip(["startprob", "transmat", "locs", "covariances"], ref[1:], strict=True):
        np.testing.assert_allclose(fitted[name].numpy(), theirs, rtol=1e-10, atol=1e-13)


def kmeanspp_model(X: torch.Tensor, seed: int, **options) -> HMM:
    centres = kmeans_plusplus(X, 3, torch.Generator().manual_seed(seed))
    return HMM.from_centres(centres, X, "gaussian", **options)


def test_delta_and_categorical_traces_never_decrease_over_seeds():
    """covars_prior = 0: the M-step is then the exact maximiser of E_q log p(x, z), so each
    E-step and M-step can only raise the ELBO (hmmlearn's prior makes it a MAP step)."""
    for seed in range(30):
        X, _ = gaussian_data(seed, lengths=[40, 25, 35])
        x = t(X)
        for guide in ("delta", "categorical"):
            model = kmeanspp_model(x, seed, covars_prior=0.0)
            result = fit_hmm(model, x, [40, 25, 35], guide, max_iter=15, tol=0)
            elbo = np.array([r.elbo for r in result.trace])
            assert np.all(np.diff(elbo) >= -1e-9 * np.abs(elbo[1:])), (seed, guide, elbo)


@pytest.mark.parametrize("guide", ["delta", "categorical", "tempered:0.5", "tempered:3",
                                   "sampled:4"])  # fmt: skip
def test_elbo_is_below_the_log_evidence_at_every_record(guide):
    X, _ = gaussian_data(5)
    x = t(X)
    result = fit_hmm(kmeanspp_model(x, 5), x, LENGTHS, guide, max_iter=15, tol=0)
    for record in result.trace:
        assert record.elbo <= record.log_evidence + 1e-9 * abs(record.log_evidence)
        assert record.kl_gap >= -1e-9 * abs(record.log_evidence)
    last = fit_hmm(result.model, x, LENGTHS, guide, max_iter=0)  # the final E-step agrees
    if not guide.startswith("sampled"):
        assert torch.equal(last.labels, result.labels)
        assert abs(last.trace[0].elbo - result.trace[-1].elbo) < 1e-9 * abs(last.trace[0].elbo)


class NoClosedForm(HMM):
    """The same HMM without its closed-form M-step: the generic gradient M-step runs."""

    m_step = None  # type: ignore[assignment]


def test_gradient_m_step_matches_the_closed_form():
    X, _ = gaussian_data(2)
    start, trans, means, var = start_values(2, "diag")
    exact = HMM(t(start), t(trans), covars_prior=0.0, locs=t(means), covariances=t(var))
    generic = NoClosedForm(t(start), t(trans), covars_prior=0.0, locs=t(means),
                           covariances=t(var))  # fmt: skip
    for model in (exact, generic):
        fit_hmm(model, t(X), LENGTHS, "categorical", max_iter=1, tol=0)
    for name, value in exact.params().items():
        np.testing.assert_allclose(generic.params()[name].numpy(), value.numpy(), rtol=1e-5,
                                   atol=1e-7)  # fmt: skip


class StudentEmission:
    """A user's emission outside the table: Student-t with 4 degrees of freedom."""

    names = ("locs", "covariances")
    letters: ClassVar[dict[str, str]] = {"locs": "m", "covariances": "c"}

    def distribution(self, params, z):
        import pyro.distributions as dist

        return dist.StudentT(4.0, params["locs"][z], params["covariances"][z].sqrt()).to_event(1)

    def validate_data(self, x):
        pass


def test_user_emission_uses_pyro_log_prob_and_raises_the_evidence():
    X, _ = gaussian_data(4)
    start, trans, means, var = start_values(4, "diag")
    model = NoClosedForm(t(start), t(trans), locs=t(means), covariances=t(var))
    model.emission = StudentEmission()
    assert read_chain(model, t(X), None).form is None
    result = fit_hmm(model, t(X), LENGTHS, "categorical", max_iter=4, tol=0)
    evidence = np.array([r.log_evidence for r in result.trace])
    assert np.all(np.diff(evidence) > 0), evidence
