"""The chain reductions of inference.hmm against brute force over all paths and against Pyro's
own enumeration (TraceEnum_ELBO, infer_discrete) on the plain Pyro model."""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate, infer_discrete

from inference.hmm import (
    Chain,
    build_layout,
    chain_of,
    choose_chunk,
    e_step,
    forward_backward,
    log_evidence,
    parse_guide,
    path_log_joint,
    read_chain,
    sample_path,
    viterbi,
)
from inference.hmm.estep import path_counts
from models.hmm import HMM

LENGTHS = torch.tensor([4, 1, 6, 3])


@pytest.fixture(autouse=True)
def _one_thread():
    """The chain's loops run many small tensor operations, which a second thread only slows."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def random_chain(K: int, N: int, seed: int, zero: bool = False) -> Chain:
    g = torch.Generator().manual_seed(seed)
    log_trans = torch.randn(K, K, generator=g, dtype=torch.float64).log_softmax(1)
    if zero:  # a forbidden transition: log 0
        log_trans[0, 1] = -math.inf
        log_trans = log_trans.log_softmax(1)
    return Chain(
        torch.randn(K, generator=g, dtype=torch.float64).log_softmax(0),
        log_trans,
        2 * torch.randn(N, K, generator=g, dtype=torch.float64),
    )


def all_paths(chain: Chain, lengths: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sequence: every path (P, T) and its log-joint (P,)."""
    K = chain.log_start.shape[0]
    out, start = [], 0
    for n in lengths.tolist():
        paths = torch.tensor(list(itertools.product(range(K), repeat=n)))
        emit = chain.log_emit[start : start + n]
        lp = chain.log_start[paths[:, 0]] + emit.gather(1, paths.T).T.sum(1)
        for t in range(1, n):
            lp = lp + chain.log_trans[paths[:, t - 1], paths[:, t]]
        out.append((paths, lp))
        start += n
    return out


def brute_posterior(chain, lengths, temperature=1.0):
    """Marginals (N, K), pair sums (K, K), log Z_T and E_q log p, E over q ~ p^(1/T)."""
    K, N = chain.log_start.shape[0], chain.log_emit.shape[0]
    marg = torch.zeros(N, K, dtype=torch.float64)
    pairs = torch.zeros(K, K, dtype=torch.float64)
    log_z, expected, start = 0.0, 0.0, 0
    for paths, lp in all_paths(chain, lengths):
        q = (lp / temperature).softmax(0)
        log_z += float(torch.logsumexp(lp / temperature, 0))
        expected += float((q * lp).sum())
        n = paths.shape[1]
        for t in range(n):
            marg[start + t].index_add_(0, paths[:, t], q)
            if t:
                pairs.view(-1).index_add_(0, paths[:, t - 1] * K + paths[:, t], q)
        start += n
    return marg, pairs, log_z, expected


@pytest.mark.parametrize("chunk", [1, 2, 3, 16])
@pytest.mark.parametrize("zero", [False, True])
def test_forward_backward_and_viterbi_equal_brute_force(chunk, zero):
    chain = random_chain(3, int(LENGTHS.sum()), seed=chunk, zero=zero)
    layout = build_layout(LENGTHS, chunk)
    marg, pairs, log_z, _ = brute_posterior(chain, LENGTHS)
    post = forward_backward(chain, layout)
    assert abs(float(post.log_evidence.sum()) - log_z) < 1e-12
    assert abs(float(log_evidence(chain, layout).sum()) - log_z) < 1e-12
    assert torch.allclose(post.marginals, marg, atol=1e-13, rtol=0)
    assert torch.allclose(post.pairs, pairs, atol=1e-13, rtol=0)
    path, best = viterbi(chain, layout)
    brute = all_paths(chain, LENGTHS)
    expected = torch.cat([paths[lp.argmax()] for paths, lp in brute])
    assert torch.equal(path, expected)
    assert torch.allclose(best, torch.stack([lp.max() for _, lp in brute]), atol=1e-12)
    assert torch.allclose(path_log_joint(chain, layout, path), best, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_tempered_elbo_equals_brute_force(temperature):
    chain = random_chain(3, int(LENGTHS.sum()), seed=7)
    layout = build_layout(LENGTHS, 2)
    marg, _, log_z, expected = brute_posterior(chain, LENGTHS, temperature)
    est = e_step(chain, layout, parse_guide(f"tempered:{temperature}"))
    # ELBO = E_q log p + H(q), H(q) = log Z_T - E_q[log p] / T, by brute force
    entropy = log_z - expected / temperature
    assert abs(est.elbo - (expected + entropy)) < 1e-11
    assert torch.allclose(est.marginals, marg, atol=1e-13)
    exact = float(log_evidence(chain, layout).sum())
    assert est.elbo <= exact + 1e-12
    if temperature == 1.0:
        assert abs(est.elbo - exact) < 1e-11


def test_small_temperature_tends_to_viterbi():
    chain = random_chain(3, int(LENGTHS.sum()), seed=4)
    # the data have no near tie: the two best paths of every sequence differ by > 0.5 nats
    assert min(float(lp.topk(2).values.diff().abs()) for _, lp in all_paths(chain, LENGTHS)) > 0.5
    layout = build_layout(LENGTHS, 4)
    path, best = viterbi(chain, layout)
    est = e_step(chain, layout, parse_guide("tempered:0.001"))
    assert torch.equal(est.labels, path)
    assert abs(est.elbo - float(best.sum())) < 1e-6


def test_sampled_paths_follow_the_posterior():
    chain = random_chain(2, int(LENGTHS.sum()), seed=5)
    marg, pairs, _, _ = brute_posterior(chain, LENGTHS)
    n = 4000  # copies of the data in one chain: one call draws n independent paths of each
    copies = Chain(chain.log_start, chain.log_trans, chain.log_emit.repeat(n, 1))
    layout = build_layout(LENGTHS.repeat(n), 3)
    path = sample_path(copies, layout, torch.Generator().manual_seed(0))
    freq = torch.nn.functional.one_hot(path, 2).double().reshape(n, -1, 2).mean(0)
    # binomial standard error <= 0.5 / sqrt(n) = 0.008: 5 of them
    assert (freq - marg).abs().max() < 0.04
    _, drawn_pairs = path_counts(path, layout, 2, torch.float64)
    assert (drawn_pairs / n - pairs).abs().max() < 0.1
    again = sample_path(copies, layout, torch.Generator().manual_seed(0))
    assert torch.equal(again, path)


def small_model(emission: str, K: int = 3, D: int = 2, seed: int = 0) -> HMM:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    start = torch.rand(K, generator=g, dtype=f64).softmax(0)
    trans = (2 * torch.rand(K, K, generator=g, dtype=f64)).softmax(1)
    if emission == "gaussian":
        params = {"locs": 2 * torch.randn(K, D, generator=g, dtype=f64),
                  "covariances": 0.5 + torch.rand(K, D, generator=g, dtype=f64)}  # fmt: skip
    elif emission == "poisson":
        params = {"rates": 0.5 + 4 * torch.rand(K, D, generator=g, dtype=f64)}
    else:
        params = {"probs": 0.1 + 0.8 * torch.rand(K, D, generator=g, dtype=f64)}
    return HMM(start, trans, emission, **params)


def small_data(emission: str, N: int, D: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    if emission == "gaussian":
        return 2 * torch.randn(N, D, generator=g, dtype=torch.float64)
    if emission == "poisson":
        return torch.poisson(3 * torch.ones(N, D, dtype=torch.float64), generator=g)
    return torch.randint(0, 2, (N, D), generator=g).double()


@pytest.mark.parametrize("emission", ["gaussian", "poisson", "bernoulli"])
def test_log_evidence_and_map_path_equal_pyro_enumeration(emission):
    model = small_model(emission)
    lengths = torch.tensor([5, 3, 7])
    x = small_data(emission, int(lengths.sum()))
    enumerated = config_enumerate(model, "parallel")
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(enumerated, lambda *a, **k: None, x, lengths)
    form = read_chain(model, x, None)
    layout = build_layout(lengths, choose_chunk(lengths, 3))
    chain = chain_of(form, x)
    assert form.form is not None  # the emission was read as an exponential family
    assert abs(float(log_evidence(chain, layout).sum()) + loss) < 1e-10 * abs(loss)
    with pyro.poutine.trace() as tracer:
        infer_discrete(enumerated, first_available_dim=-2, temperature=0)(x, lengths)
    nodes = tracer.trace.nodes
    path, _ = viterbi(chain, layout)
    starts = lengths.cumsum(0) - lengths
    for s, n in enumerate(lengths.tolist()):
        pyro_path = torch.stack([nodes[f"z_{t}"]["value"][s] for t in range(n)])
        assert torch.equal(path[starts[s] : starts[s] + n], pyro_path)


def test_generic_table_equals_the_exponential_family_table():
    model = small_model("gaussian")
    x = small_data("gaussian", 9)
    form = read_chain(model, x, None)
    generic = form._replace(form=None)
    assert torch.allclose(chain_of(generic, x).log_emit, chain_of(form, x).log_emit, atol=1e-12)


def test_long_sequence_stays_finite():
    g = torch.Generator().manual_seed(0)
    T, K = 200_000, 3
    states = torch.randint(K, (T,), generator=g)
    x = (3.0 * states.double() + torch.randn(T, generator=g, dtype=torch.float64))[:, None]
    model = small_model("gaussian", K=K, D=1)
    lengths = torch.tensor([T])
    layout = build_layout(lengths, choose_chunk(lengths, K))
    assert layout.blocked  # the chunked recursion, not a 200000-step loop
    chain = chain_of(read_chain(model, x, None), x)
    post = forward_backward(chain, layout)
    assert torch.isfinite(post.log_evidence).all() and post.log_evidence.item() < -1e5
    assert torch.isfinite(post.marginals).all()
    assert torch.allclose(post.marginals.sum(1), torch.ones(T, dtype=torch.float64))
    assert abs(float(post.pairs.sum()) - (T - 1)) < 1e-6 * T
    path, best = viterbi(chain, layout)
    assert math.isfinite(float(best)) and best <= post.log_evidence
    assert torch.allclose(path_log_joint(chain, layout, path), best, rtol=1e-12)
    plain = build_layout(lengths[:1] * 0 + 5000, 5000)  # a prefix through the plain loop
    head = Chain(chain.log_start, chain.log_trans, chain.log_emit[:5000])
    chunked = build_layout(lengths[:1] * 0 + 5000, 64)
    assert torch.allclose(log_evidence(head, plain), log_evidence(head, chunked), rtol=1e-13)
