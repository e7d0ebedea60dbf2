"""Claim 7 of the demonstration: the mixture in time. On a hidden Markov model the Delta guide
over whole state paths is Viterbi decoding, and EM with it is Viterbi training.

7a. The Delta guide's E-step on a built-in sequence (``inference.hmm.fit_hmm`` with
    ``max_iter=0``) is the Viterbi path of an independent, plain numpy max-product recursion
    written here (``numpy_viterbi``) from the model's parameters, and its ELBO is that path's
    log p(x, z).
7b. Viterbi training (delta) and Baum-Welch (categorical) from the same start: both ELBO traces
    never decrease (``covars_prior=0``: the M-step is then the exact maximiser of
    E_q log p(x, z), as the HMM tests explain; hmmlearn's default prior would make it a MAP
    step), and Baum-Welch's final log evidence is above Viterbi training's final ELBO (the
    delta pays the KL gap, and the ELBO is a lower bound).

The built-in sequence: three sequences (lengths 150, 90, 120; ``quick``: 80, 50, 60) of a
sticky 3-state chain with 2-D Gaussian emissions, drawn from a seeded numpy generator.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from inference.demo_checks import Claim, check
from inference.demo_figures import save, subplots
from inference.hmm import fit_hmm
from inference.init import kmeans_plusplus
from inference.trace import TraceRecord
from models.hmm import HMM

MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [0.5, 3.0]])
SCALES = np.array([[1.0, 0.7], [0.8, 1.0], [0.9, 0.6]])
STAY = 0.9  # probability of staying in a state; the rest is spread over the others


def builtin_sequences(quick: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, 2) float64, lengths (3,)) from the fixed 3-state chain, seeded."""
    rng = np.random.default_rng(seed)
    K = MEANS.shape[0]
    trans = np.full((K, K), (1 - STAY) / (K - 1)) + np.eye(K) * (STAY - (1 - STAY) / (K - 1))
    lengths = np.array([80, 50, 60] if quick else [150, 90, 120])
    rows = []
    for n in lengths:
        z = int(rng.integers(K))
        for _ in range(n):
            rows.append(MEANS[z] + SCALES[z] * rng.normal(size=2))
            z = int(rng.choice(K, p=trans[z]))
    return np.array(rows), lengths


def numpy_viterbi(
    log_start: np.ndarray, log_trans: np.ndarray, log_emit: np.ndarray
) -> tuple[np.ndarray, float]:
    """The most probable path of one sequence and its log p(x, z): a plain max-product loop
    over time with back-pointers (ties to the lowest state, as numpy's argmax).

    Args:
        log_start: (K,); log_trans: (K, K), row = from; log_emit: (T, K)."""
    T, K = log_emit.shape
    score = log_start + log_emit[0]
    back = np.zeros((T, K), dtype=np.int64)
    for t in range(1, T):
        candidates = score[:, None] + log_trans  # (from, to)
        back[t] = candidates.argmax(0)
        score = candidates.max(0) + log_emit[t]
    path = np.empty(T, dtype=np.int64)
    path[-1] = int(score.argmax())
    for t in range(T - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path, float(score.max())


def diag_gaussian_log_emit(x: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """(N, K) log N(x_t | means[k], diag(variances[k])) written out."""
    diff = x[:, None, :] - means[None]
    return -0.5 * ((diff**2 / variances[None]).sum(-1) + np.log(2 * math.pi * variances).sum(-1))


def _independent_paths(model: HMM, x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, float]:
    """The numpy Viterbi path of every sequence under ``model``'s parameters, and the sum of
    their log-joints."""
    params = {k: v.numpy() for k, v in model.params().items()}
    log_emit = diag_gaussian_log_emit(x, params["locs"], params["covariances"])
    paths, total, start = [], 0.0, 0
    for n in lengths.tolist():
        path, best = numpy_viterbi(
            np.log(params["startprob"]), np.log(params["transmat"]), log_emit[start : start + n]
        )
        paths.append(path)
        total += best
        start += n
    return np.concatenate(paths), total


def _start_model(x: torch.Tensor, seed: int) -> HMM:
    centres = kmeans_plusplus(x, MEANS.shape[0], torch.Generator().manual_seed(seed))
    return HMM.from_centres(centres, x, "gaussian", covars_prior=0.0)


def _never_decreases(trace: Sequence[TraceRecord]) -> tuple[bool, float]:
    """(no ELBO drop beyond rounding, the largest drop)."""
    drops = [a.elbo - b.elbo for a, b in itertools.pairwise(trace)]
    worst = max(drops, default=0.0)
    scale = max(abs(r.elbo) for r in trace)
    return worst <= 1e-10 * scale, worst


def claim_hmm(quick: bool = False, seed: int = 0) -> Claim:
    """Claim 7 (see the module docstring)."""
    data, lengths = builtin_sequences(quick, seed)
    x = torch.from_numpy(data)
    decoded = fit_hmm(_start_model(x, seed), x, lengths, "delta", max_iter=0)
    reference, best = _independent_paths(decoded.model, data, lengths)
    same = bool((decoded.labels.numpy() == reference).all())
    gap = abs(decoded.trace[0].elbo - best)
    shape = f"N={x.shape[0]} in {len(lengths)} sequences, K={MEANS.shape[0]}"
    checks = [
        check(
            "7",
            f"HMM: the Delta guide's E-step = the Viterbi path (plain numpy max-product; {shape})",
            same and gap < 1e-9 * abs(best),
            f"paths identical: {same} ({int((decoded.labels.numpy() != reference).sum())} "
            f"steps differ), |ELBO - log p(x, path)| = {gap:.1e}",
        )
    ]
    viterbi = fit_hmm(_start_model(x, seed), x, lengths, "delta", max_iter=100)
    baum = fit_hmm(_start_model(x, seed), x, lengths, "categorical", max_iter=200, tol=1e-9)
    up_v, drop_v = _never_decreases(viterbi.trace)
    up_b, drop_b = _never_decreases(baum.trace)
    final_v, final_b = viterbi.trace[-1].elbo, baum.trace[-1].log_evidence
    checks.append(
        check(
            "7",
            "Viterbi training and Baum-Welch from one start: ELBO traces never decrease, "
            "Baum-Welch's final log p(X) >= Viterbi training's final ELBO",
            up_v and up_b and final_b >= final_v,
            f"largest drop {max(drop_v, 0.0):.1e} / {max(drop_b, 0.0):.1e} over "
            f"{viterbi.n_iter} / {baum.n_iter} iterations; final {final_b:.2f} >= {final_v:.2f}",
        )
    )

    def draw(path: str) -> None:
        traces(path, viterbi.trace, baum.trace, x.shape[0])

    return Claim(checks, {"7_hmm_viterbi_vs_baum_welch.png": draw})


def traces(path: str, viterbi: Sequence[TraceRecord], baum: Sequence[TraceRecord], n: int) -> None:
    """ELBO per point of both fits (solid) and each one's log evidence (dashed); the axis is
    zoomed on iterations >= 1, as claim 6's figure."""
    fig, (ax,) = subplots(1, width=6.0, height=4.2)
    for colour, label, trace in (("C0", "Viterbi training (delta)", viterbi),
                                 ("C1", "Baum-Welch (categorical)", baum)):  # fmt: skip
        steps = [r.iteration for r in trace]
        ax.plot(
            steps, [r.elbo / n for r in trace], "-o", ms=3, color=colour, label=f"{label}: ELBO"
        )
        ax.plot(steps, [r.log_evidence / n for r in trace], "--", color=colour, alpha=0.6)
    ax.plot([], [], "--", color="0.4", label="log p(X | theta) (dashed)")
    later = [v / n for t in (viterbi, baum) for r in t[1:] for v in (r.elbo, r.log_evidence)]
    if later:
        pad = 0.1 * (max(later) - min(later)) + 1e-9
        ax.set_ylim(min(later) - pad, max(later) + 3 * pad)
    ax.set_xlabel("iteration (M-steps done)")
    ax.set_ylabel("nats per step")
    ax.legend(fontsize=7)
    save(fig, path, "7. HMM: Viterbi training (delta guide) against Baum-Welch")
