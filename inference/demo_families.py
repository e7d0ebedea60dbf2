"""Claim 6 of the demonstration: K-means among the other guide families, and as their limit.

* All families fitted from the same start by ``inference.compare.compare``:
  at theta_0 the ELBOs are ordered sampled <= delta <= topk:2 <= categorical = log p(X), the
  exact E-steps never decrease the ELBO, and the delta guide's KL gap log p(X) - ELBO is > 0
  while the categorical's is 0.
* Tempered q (softmax of log p(x, z) / T) tends to the delta as T -> 0.
* Soft EM (categorical) tends to K-means as the component variance shrinks: scaling the data by
  s is the same as the variance 1/s^2 on the original data, so sigma = 1/s.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from inference import demo_figures_families as figures
from inference.compare import compare
from inference.demo_checks import Claim, check
from inference.elbo import elbo_from_table
from inference.em import fit
from inference.enumerate import log_joint
from inference.guides import Categorical, Delta, Tempered
from inference.responsibilities import Responsibilities
from models import RestrictedGMM

GUIDES = ("delta", "sampled", "topk:2", "tempered:0.5", "categorical")
EXACT = ("delta", "topk:2", "categorical")  # E-steps that maximise the ELBO over their family


def _never_decreases(values: list[float]) -> bool:
    return all(b >= a - 1e-9 * abs(a) for a, b in itertools.pairwise(values))


def claim_families(x: Tensor, locs: Tensor, seed: int, max_iter: int = 30) -> Claim:
    """Claim 6a: the ELBO traces of every family, and the delta guide's KL gap."""
    results = compare(RestrictedGMM(locs), x, GUIDES, max_iter=max_iter, seed=seed)
    n = x.shape[0]
    start = {spec: r.trace[0] for spec, r in results.items()}
    evidence = start["categorical"].log_evidence
    chain = [start[s].elbo for s in ("sampled", "delta", "topk:2", "categorical")]
    slack = 1e-9 * abs(evidence)
    ordered = all(b >= a - slack for a, b in itertools.pairwise(chain))
    ordered = ordered and abs(chain[-1] - evidence) <= slack
    ordered = ordered and start["tempered:0.5"].elbo <= evidence + slack
    rising = {s: _never_decreases([r.elbo for r in results[s].trace]) for s in EXACT}
    delta_gaps = [r.kl_gap for r in results["delta"].trace]
    exact_gap = max(abs(r.kl_gap) for r in results["categorical"].trace)
    checks = [
        check(
            "6",
            "same start theta_0: ELBO sampled <= delta <= topk:2 <= categorical = log p(X)",
            ordered,
            "per point " + " <= ".join(f"{v / n:.4f}" for v in chain) + f" = {evidence / n:.4f}",
        ),
        check(
            "6",
            "exact E-steps (delta, topk:2, categorical) never decrease the ELBO",
            all(rising.values()),
            ", ".join(f"{s}: {len(results[s].trace) - 1} M-steps" for s in EXACT),
        ),
        check(
            "6",
            "KL gap log p(X) - ELBO: delta > 0 at every iteration, categorical = 0",
            min(delta_gaps) > 0 and exact_gap <= slack,
            f"delta final gap {delta_gaps[-1]:.3f} nats ({delta_gaps[-1] / n:.2e} per point), "
            f"categorical max |gap| {exact_gap:.1e}",
        ),
    ]
    traces = {spec: r.trace for spec, r in results.items()}
    return Claim(checks, {"6_elbo_traces.png": lambda path: figures.traces(path, traces, n)})


def claim_tempered(x: Tensor, locs: Tensor, temperatures: list[float]) -> Claim:
    """Claim 6b: tempered E-steps under ``locs`` (K, D) for decreasing ``temperatures``."""
    table = log_joint(RestrictedGMM(locs), x)
    K = locs.shape[0]
    best = Delta().e_step(table)
    labels = best.labels()
    delta_elbo = float(elbo_from_table(table, best))
    qs = [Tempered(t).e_step(table).dense(K) for t in temperatures]
    # distance to the delta on the mode: total variation = 1 - q(mode)
    tv = [float((1 - q.gather(1, labels[:, None])).mean()) for q in qs]
    same_mode = all(bool((q.argmax(1) == labels).all()) for q in qs)
    elbo_gap = [
        abs(float(elbo_from_table(table, Responsibilities(q, None))) - delta_elbo) / x.shape[0]
        for q in qs
    ]
    exact = Categorical().e_step(table).dense(K)
    at_one = float((Tempered(1.0).e_step(table).dense(K) - exact).abs().max())
    decreasing = all(b <= a for a, b in itertools.pairwise(tv))
    checks = [
        check(
            "6",
            "tempered q -> delta as T -> 0 (mean total variation to the delta, same mode)",
            decreasing and same_mode and tv[-1] < 1e-3 and at_one < 1e-12,
            f"TV {tv[0]:.3f} at T={temperatures[0]:g} -> {tv[-1]:.1e} at "
            f"T={temperatures[-1]:g}; |ELBO - ELBO(delta)| per point -> {elbo_gap[-1]:.1e}; "
            f"T=1 vs categorical max |diff| {at_one:.0e}",
        )
    ]
    # the point the delta is least sure of shows the q's sharpening best
    ambiguous = int(exact.max(1).values.argmin())
    shown = torch.stack([q[ambiguous] for q in qs])

    def draw(path: str) -> None:
        figures.tempered(path, temperatures, tv, elbo_gap, shown, int(labels[ambiguous]))

    return Claim(checks, {"6_tempered_to_delta.png": draw})


def claim_shrinking_variance(
    x: Tensor, locs: Tensor, scales: list[float], max_iter: int = 100
) -> Claim:
    """Claim 6c: soft EM vs K-means on ``s * x`` from ``s * locs`` for each scale s.

    Both run to their fixed point (tol 0 for K-means: the parameter-shift rule would stop it
    early, where soft EM, with its ELBO rule, would go on), so the two limits are comparable.
    """
    agree, softness, centre_diff = [], [], []
    for s in scales:
        soft = fit(RestrictedGMM(s * locs), s * x, Categorical(), max_iter=max_iter, tol=1e-8)
        hard = fit(RestrictedGMM(s * locs), s * x, Delta(), max_iter=max_iter, tol=0.0)
        agree.append(float((soft.labels == hard.labels).double().mean()))
        softness.append(float((1 - soft.q.dense(locs.shape[0]).max(1).values).mean()))
        diff = (soft.model.locs.detach() - hard.model.locs.detach()).abs().max() / s
        centre_diff.append(float(diff))  # in the original data's units
    sigmas = [1 / s for s in scales]
    checks = [
        check(
            "6",
            "soft EM -> K-means as sigma -> 0 (data scaled by s = 1/sigma)",
            agree[-1] == 1.0 and softness[-1] < 1e-6 and centre_diff[-1] < 1e-6,
            f"sigma {sigmas[0]:g} -> {sigmas[-1]:g}: labels equal {agree[0]:.3f} -> "
            f"{agree[-1]:.3f}, mean 1 - max q {softness[0]:.1e} -> {softness[-1]:.1e}, "
            f"max |centre diff| {centre_diff[0]:.1e} -> {centre_diff[-1]:.1e}",
        )
    ]

    def draw(path: str) -> None:
        figures.shrinking_variance(path, sigmas, agree, softness, centre_diff)

    return Claim(checks, {"6_soft_em_to_kmeans.png": draw})
