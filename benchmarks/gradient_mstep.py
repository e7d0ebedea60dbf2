"""Issue 18's gradient M-step row: a Student-t (df = 3) mixture, a plain Pyro model outside the
table of families, at N = 1e5, K = 8, D = 1, against a numpy EM of the same mixture.

    python benchmarks/gradient_mstep.py [--quick] [--rounds R] [--no-old]

Per iteration = (fit of M iterations - fit of M2) / (M - M2) from the same start, so the first
M-steps (the farthest from their optimum) and fixed costs cancel; medians over rounds taken in
turn (``expfam_cases.interleaved``), 1 and 2 threads (``torch.set_num_threads``,
``threadpoolctl`` for numpy), float64, Pyro's validation off. Rows:

* mixem: ``fit(StudentTMixture(...), x, guide, m_step="gradient")`` (``inference.mstep_gradient``:
  warm-started L-BFGS on E_q[log p(x, z)], evaluated from the model's traces);
* old: the M-step as it was before issue 18, in this file: 100 L-BFGS steps on Pyro's
  ``Trace_ELBO`` / ``TraceEnum_ELBO`` with the guide held at q (``--no-old`` leaves it out);
* numpy: EM for the same mixture (Peel & McLachlan's ECM: the t's latent scale weights
  u_ic = (df + 1) / (df + d_ic^2), then weighted means and scales), hard (argmax) for delta,
  soft for categorical, from the same start.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule, PyroParam
from scipy.special import gammaln
from threadpoolctl import threadpool_limits
from torch.distributions import constraints

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

import expfam_cases as cases

from inference import fit
from inference.enumerate import isolated_params
from inference.guides import Categorical, Delta, is_exact_for_trace_elbo, pyro_guide
from inference.mstep_family import lbfgs
from inference.mstep_gradient import GradientMStep

DF, TARGET = 3.0, 1.0
THREADS = (1, 2)


class StudentTMixture(PyroModule):
    """What a user writes: weights, locations and scales of K Student-t components, df fixed."""

    def __init__(self, locs: torch.Tensor, scales: torch.Tensor, df: float = DF) -> None:
        super().__init__()
        K = locs.shape[0]
        self.n_components, self.df = K, df
        self.logits = PyroParam(torch.zeros(K, dtype=locs.dtype))
        self.locs = PyroParam(locs.clone())
        self.scales = PyroParam(scales.clone(), constraint=constraints.positive)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=self.logits))
            t = dist.StudentT(self.df, self.locs[z], self.scales[z])
            pyro.sample("x", t.to_event(1), obs=x)


def problem(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1) data from K t components 4 apart (overlapping tails), and (K, 1) starting
    locations: the centres moved by up to 1.5."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.arange(k, dtype=torch.float64)[:, None] * 4
    labels = torch.randint(k, (n,), generator=g)
    t = torch.distributions.StudentT(DF).sample((n, 1)).double()
    start = centres + (torch.rand(k, 1, generator=g, dtype=torch.float64) * 3 - 1.5)
    return centres[labels] + t, start


def old_m_step(model: Any, x: torch.Tensor, est: Any) -> int:
    """The gradient M-step before issue 18: 100 L-BFGS steps on Pyro's ELBO, q as the guide."""
    params = [p for p in model.parameters() if p.requires_grad]
    guide = pyro_guide(est.q, int(model.n_components))
    elbo = Trace_ELBO() if is_exact_for_trace_elbo(est.q) else TraceEnum_ELBO(max_plate_nesting=1)
    optimiser = lbfgs(params, 100)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = elbo.differentiable_loss(model, guide, x) / x.shape[0]
        loss.backward()
        return loss

    with isolated_params():
        optimiser.step(closure)
    return 0


def numpy_em(x: np.ndarray, locs: np.ndarray, iters: int, soft: bool) -> np.ndarray:
    """``iters`` EM iterations of the t mixture (df fixed) from ``locs`` (K,), unit scales,
    uniform weights; returns the locations."""
    x = x[:, 0]
    K = locs.shape[0]
    mu, sigma, w = locs.astype(float).copy(), np.ones(K), np.full(K, 1 / K)
    const = gammaln((DF + 1) / 2) - gammaln(DF / 2) - 0.5 * math.log(DF * math.pi)
    for _ in range(iters):
        d2 = ((x[:, None] - mu) / sigma) ** 2  # (N, K)
        log_p = np.log(w) + const - np.log(sigma) - (DF + 1) / 2 * np.log1p(d2 / DF)
        if soft:
            r = np.exp(log_p - log_p.max(1, keepdims=True))
            r /= r.sum(1, keepdims=True)
        else:
            r = np.zeros_like(log_p)
            r[np.arange(len(x)), log_p.argmax(1)] = 1.0
        u = (DF + 1) / (DF + d2)
        ru = r * u
        n_c = np.maximum(r.sum(0), 1e-300)
        w = n_c / n_c.sum()
        mu = (ru * x[:, None]).sum(0) / np.maximum(ru.sum(0), 1e-300)
        sigma = np.sqrt(np.maximum((ru * (x[:, None] - mu) ** 2).sum(0) / n_c, 1e-300))
    return mu


class PerIteration:
    """A measure: seconds per iteration of ``run(iters)``, (M - M2) differenced."""

    def __init__(self, run: Any, threads: int, m: int, m2: int) -> None:
        self.run, self.threads, self.m, self.m2 = run, threads, m, m2

    def timed(self, iters: int) -> float:
        torch.set_num_threads(self.threads)
        with threadpool_limits(self.threads):
            started = time.perf_counter()
            self.run(iters)
            return time.perf_counter() - started

    def warm_up(self) -> None:
        self.timed(1)

    def __call__(self) -> float:
        return (self.timed(self.m) - self.timed(self.m2)) / (self.m - self.m2)


def measures(x: torch.Tensor, start: torch.Tensor, m: int, m2: int, old: bool) -> dict:
    found: dict[Any, Any] = {}
    evaluations: dict[str, list[int]] = {}
    scales = torch.ones_like(start)
    for name, family in (("delta", Delta()), ("categorical", Categorical())):

        def ours(iters: int, family: Any = family, name: str = name) -> None:
            step = GradientMStep()
            result = fit(
                StudentTMixture(start, scales), x, family, max_iter=iters, tol=0.0, m_step=step
            )
            assert result.n_iter == iters, result.stop_reason
            if iters == m:  # the M-iteration fit's M-steps
                evaluations[name] = [r.evaluations for r in step.reports]

        def before(iters: int, family: Any = family) -> None:
            model = StudentTMixture(start, scales)
            result = fit(model, x, family, max_iter=iters, tol=0.0, m_step=old_m_step)
            assert result.n_iter == iters, result.stop_reason

        def numpy(iters: int, soft: bool = name == "categorical") -> None:
            numpy_em(x.numpy(), start.numpy()[:, 0], iters, soft)

        for t in THREADS:
            found[("mixem", name, t)] = PerIteration(ours, t, m, m2)
            if old:
                found[("old", name, t)] = PerIteration(before, t, m, m2)
            found[("numpy", name, t)] = PerIteration(numpy, t, m, m2)
    return {"measures": found, "evaluations": evaluations}


def cell(value: Any) -> str:
    return f"{value:.3f} s/iter" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 2e4, fewer iterations")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-old", action="store_true", help="leave out the pre-issue-18 M-step")
    args = parser.parse_args()
    pyro.enable_validation(False)
    n, k = (20_000 if args.quick else 100_000), 8
    m, m2 = (4, 1) if args.quick else (6, 2)
    x, start = problem(n, k)
    built = measures(x, start, m, m2, not args.no_old)
    medians = cases.interleaved(built["measures"], args.rounds)
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, N={n}, K={k}, "
        f"D=1, df={DF}, M={m}, M2={m2}, rounds={args.rounds}"
    )
    print(
        "| guide | threads | mixem | old M-step | numpy EM | mixem / numpy | target | met | "
        "L-BFGS evaluations per M-step |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("delta", "categorical"):
        for t in THREADS:
            ours, theirs = medians[("mixem", name, t)], medians[("numpy", name, t)]
            before = medians.get(("old", name, t), "-")
            ratio = f"{ours / theirs:.1f}" if isinstance(ours, float) and theirs > 0 else "-"
            met = "yes" if isinstance(ours, float) and ours <= TARGET else "**no**"
            evals = built["evaluations"].get(name, [])
            print(
                f"| {name} | {t} | {cell(ours)} | {cell(before)} | {cell(theirs)} | {ratio} "
                f"| <= {TARGET} s/iter | {met} | {evals} |"
            )


if __name__ == "__main__":
    main()
