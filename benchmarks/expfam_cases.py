"""The measurements behind ``benchmarks/expfam.py`` (issue 14): data in each model's support,
a user's plain Pyro mixture, and one timing per (method, thread count), each a call returning
seconds per iteration.

Per-iteration times are differences of two whole fits from the same start, ``max_iter = M`` and
``max_iter = M2``, divided by ``M - M2``: set-up costs (validation, centring, the first trace,
thread pools) cancel, for mixem, scikit-learn and faiss alike. A fit that stops before its
``max_iter`` raises (the difference would not be per iteration).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from threadpoolctl import threadpool_limits
from torch import Tensor

import inference
from models import GMM, BernoulliMixture, CategoricalMixture, PoissonMixture, VMFMixture

try:
    import faiss
except ImportError:  # the `bench` extra
    faiss = None

FAISS_MISSING = "faiss not installed (pip install -e '.[bench]')"
N_CATEGORIES = 4  # categories per feature of the categorical data


class ExponentialMixture(PyroModule):
    """A user's mixture of exponentials, written in plain Pyro: learned weights and rates."""

    def __init__(self, rates: Tensor) -> None:
        super().__init__()
        self.logits = PyroParam(torch.zeros(rates.shape[0], dtype=rates.dtype))
        self.rates = PyroParam(rates.clone(), constraint=constraints.positive)

    @property
    def n_components(self) -> int:
        return int(self.rates.shape[0])

    def forward(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=self.logits))
            pyro.sample("x", dist.Exponential(self.rates[z]).to_event(1), obs=x)


def blobs(n: int, d: int, k: int, seed: int) -> Tensor:
    """(n, d) float32 points around k centres in [-8, 8]^d, unit spread (as ``cases.blobs``)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(k, d, generator=g) * 16 - 8
    return centres[torch.randint(k, (n,), generator=g)] + torch.randn(n, d, generator=g)


def rows(x: Tensor, k: int, seed: int) -> Tensor:
    """(k, D) distinct random rows of ``x``: the same start for every method."""
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:k]].clone()


def _components(n: int, k: int, seed: int) -> tuple[torch.Generator, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return g, torch.randint(k, (n,), generator=g)


def binary(n: int, d: int, k: int, seed: int) -> Tensor:
    g, z = _components(n, k, seed)
    probs = torch.rand(k, d, generator=g) * 0.8 + 0.1
    return torch.bernoulli(probs[z], generator=g)


def counts(n: int, d: int, k: int, seed: int) -> Tensor:
    g, z = _components(n, k, seed)
    rates = torch.rand(k, d, generator=g) * 9.5 + 0.5
    return torch.poisson(rates[z], generator=g)


def codes(n: int, d: int, k: int, seed: int) -> Tensor:
    """(n, d) category codes in 0..N_CATEGORIES - 1, by inverting each component's CDF."""
    g, z = _components(n, k, seed)
    probs = torch.rand(k, d, N_CATEGORIES, generator=g) + 0.1
    cdf = (probs.cumsum(-1) / probs.sum(-1, keepdim=True))[..., :-1]  # (k, d, C - 1)
    u = torch.rand(n, d, 1, generator=g)
    return (u > cdf[z]).sum(-1).float()


def directions(n: int, d: int, k: int, seed: int) -> Tensor:
    x = blobs(n, d, k, seed).double()
    return (x / x.norm(dim=1, keepdim=True)).float()


def positive(n: int, d: int, k: int, seed: int) -> Tensor:
    g, z = _components(n, k, seed)
    rates = torch.rand(k, d, generator=g) * 4.5 + 0.5
    return torch.empty(n, d).exponential_(generator=g) / rates[z]


def exponential_start(centres: Tensor, x: Tensor) -> ExponentialMixture:
    """Rates of the centres' rows blended with the data mean (a user's obvious start)."""
    return ExponentialMixture(1.0 / (0.5 * (centres + x.mean(0))))


# name -> (data in its support, model from (centres, x)); each fit starts from a fresh model
MODEL_CASES: dict[str, tuple[Callable[..., Tensor], Callable[[Tensor, Tensor], Any]]] = {
    "BernoulliMixture": (binary, BernoulliMixture.from_centres),
    "PoissonMixture": (counts, PoissonMixture.from_centres),
    "CategoricalMixture": (codes, CategoricalMixture.from_centres),
    "VMFMixture": (directions, VMFMixture.from_centres),
    "GMM diag": (blobs, lambda c, x: GMM.from_centres(c, x, covariance_type="diag")),
    "GMM spherical": (blobs, lambda c, x: GMM.from_centres(c, x, covariance_type="spherical")),
    "plain Pyro Exponential (user's)": (positive, exponential_start),
}


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)


def mixem_fit(make_model: Callable[[], Any], x: Tensor, guide: str) -> Callable[[int], float]:
    """Seconds of ``inference.fit`` from a fresh ``make_model()`` with ``max_iter`` iterations."""

    def run(max_iter: int) -> float:
        model = make_model()
        family = inference.Categorical() if guide == "categorical" else inference.Delta()
        began = time.perf_counter()
        result = inference.fit(model, x, family, max_iter=max_iter, tol=0.0)
        elapsed = time.perf_counter() - began
        _check_iterations("mixem", result.n_iter, max_iter)
        return elapsed

    return run


def sklearn_fit(x: Tensor, init: Tensor) -> Callable[[int], float]:
    """Seconds of scikit-learn's ``KMeans(algorithm="lloyd")`` from ``init``."""
    from sklearn.cluster import KMeans

    data, start = x.numpy(), init.numpy()

    def run(max_iter: int) -> float:
        km = KMeans(len(start), init=start, n_init=1, max_iter=max_iter, tol=0.0, algorithm="lloyd")
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
            km.fit(data)
        elapsed = time.perf_counter() - began
        _check_iterations("scikit-learn", int(km.n_iter_), max_iter)
        return elapsed

    return run


def faiss_fit(x: Tensor, init: Tensor) -> Callable[[int], float]:
    """Seconds of faiss-cpu's ``Kmeans.train`` from ``init``, every point used (no sampling)."""
    data, start = x.numpy(), init.numpy()
    k, d = start.shape

    def run(max_iter: int) -> float:
        if faiss is None:
            raise RuntimeError(FAISS_MISSING)
        km = faiss.Kmeans(d, k, niter=max_iter, max_points_per_centroid=2**30, verbose=False)
        began = time.perf_counter()
        km.train(data, init_centroids=start)
        elapsed = time.perf_counter() - began
        _check_iterations("faiss", len(km.iteration_stats), max_iter)
        return elapsed

    return run


def _check_iterations(who: str, done: int, asked: int) -> None:
    if done != asked:
        raise RuntimeError(f"{who} stopped after {done} of {asked} iterations")


class PerIteration:
    """A measure: (run(M) - run(M2)) / (M - M2) seconds, under ``threads`` threads for torch,
    faiss and every thread pool threadpoolctl knows (scikit-learn's OpenMP and BLAS)."""

    def __init__(self, run: Callable[[int], float], threads: int, iters: tuple[int, int]) -> None:
        self.run, self.threads, (self.many, self.few) = run, threads, iters

    def __call__(self) -> float:
        with threadpool_limits(self.threads):
            set_threads(self.threads)
            return (self.run(self.many) - self.run(self.few)) / (self.many - self.few)

    def warm_up(self) -> None:
        """One short fit: first-use costs (compiling, thread pools, page-ins) out of the way."""
        with threadpool_limits(self.threads):
            set_threads(self.threads)
            self.run(self.few)


def describe(error: BaseException, detail: object = None) -> str:
    """One table cell: the error's type and message (or ``detail``), on one line, no pipes."""
    text = " ".join(str(error if detail is None else detail).split()).replace("|", "/")
    return f"{type(error).__name__}: {text}"[:200]


def interleaved(measures: dict[Any, Callable[[], float]], rounds: int) -> dict[Any, Any]:
    """Median of each measure over ``rounds`` rounds, the measures in turn within a round, after
    a warm-up round (``measure.warm_up()`` where it has one); a measure that raises gives its
    error (a string) in place of a median and is not run again."""
    samples: dict[Any, list[float]] = {name: [] for name in measures}
    errors: dict[Any, str] = {}
    for round_ in range(rounds + 1):
        for name, measure in measures.items():
            if name in errors:
                continue
            try:
                if round_ == 0:
                    getattr(measure, "warm_up", measure)()
                    continue
                value = measure()
            except Exception as error:  # the row shows it; the table goes on
                errors[name] = describe(error)
                continue
            samples[name].append(value)
    return {name: errors.get(name) or statistics.median(samples[name]) for name in measures}
