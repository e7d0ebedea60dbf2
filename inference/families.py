"""The guide families: each turns the table ``log_joint`` (n, K) into its best member.

| family          | q_i                                              | EM becomes               |
|-----------------|--------------------------------------------------|--------------------------|
| ``delta``       | one-hot at argmax log_joint[i]                   | hard EM (K-means)        |
| ``categorical`` | softmax(log_joint[i]), the exact posterior       | classical EM             |
| ``tempered:T``  | softmax(log_joint[i] / T)                        | deterministic annealing  |
| ``topk:k``      | posterior on the k largest entries, renormalised | truncated variational EM |
| ``sampled``     | one-hot at a draw from the posterior             | stochastic EM            |

``Anneal`` is not a family but a schedule ``iteration -> family`` that ``inference.em.fit``
accepts in place of one. Every class is a small frozen dataclass; equal objects give equal
E-steps (``Sampled`` up to its generator's state), which is how the EM loop tells that a
schedule has settled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inference.errors import MixemError
from inference.reductions import max_rows, softmax_rows
from inference.responsibilities import Responsibilities


def format_number(value: float) -> str:
    """Shortest spelling of ``value`` that parses back to it (``0.5``, ``2``, ``0.1234567891``)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


@dataclass(frozen=True)
class Delta:
    """q(z_i) = Delta(c_i): one component per point, probability one.

    The ELBO of a Delta q is sum_i log p(x_i, c_i) (its entropy is 0), so the best member puts
    each c_i at the argmax of row i of the table; on the restricted GMM that is the nearest
    centroid. Ties go to the lowest index, as ``torch.argmax`` guarantees.
    """

    name: str = "delta"
    hard: bool = True

    def pass_reduction(self) -> tuple[str, float]:
        """The fused pass's row reduction (``inference.fused``): the first argmax."""
        return ("hard", 1.0)

    def e_step(self, log_joint: Tensor) -> Responsibilities:
        """One-hot q: ``log_joint`` (n, K) -> weights (n, 1) at indices (n, 1)."""
        # max_rows: torch.argmax's scalar loop costs more than the GEMM that made the table
        return Responsibilities.one_hot(max_rows(log_joint)[1], log_joint.dtype)


@dataclass(frozen=True)
class Categorical:
    """q(z_i) = p(z_i | x_i, theta): the exact posterior, so the ELBO equals log p(X | theta)."""

    @property
    def name(self) -> str:
        return "categorical"

    @property
    def hard(self) -> bool:
        return False

    def pass_reduction(self) -> tuple[str, float]:
        """The fused pass's row reduction (``inference.fused``): the softmax."""
        return ("soft", 1.0)

    def e_step(self, log_joint: Tensor) -> Responsibilities:
        """Dense q: ``log_joint`` (n, K) -> weights (n, K)."""
        return Responsibilities(softmax_rows(log_joint), None)


@dataclass(frozen=True)
class Tempered:
    """q(z_i) proportional to p(x_i, z_i | theta)^(1/T), the optimum of the free energy
    E_q[log p] + T H(q) (Rose 1998). T = 1 is the posterior; T -> 0 tends to ``Delta``.

    Args:
        temperature: T, finite and > 0.
    """

    temperature: float

    def __post_init__(self) -> None:
        if not (0 < self.temperature < math.inf):
            raise MixemError(
                f"tempered:T needs a finite temperature T > 0, got {self.temperature!r}"
            )

    @property
    def name(self) -> str:
        return f"tempered:{format_number(self.temperature)}"

    @property
    def hard(self) -> bool:
        return False

    def pass_reduction(self) -> tuple[str, float]:
        """The fused pass's row reduction (``inference.fused``): the softmax of table / T."""
        return ("soft", self.temperature)

    def e_step(self, log_joint: Tensor) -> Responsibilities:
        """Dense q: ``log_joint`` (n, K) -> weights (n, K)."""
        # shift first: the largest entry becomes 0, so even a T that sends the rest to -inf
        # leaves a well-defined one-hot row instead of softmax(-inf, ..., -inf) = NaN
        shifted = log_joint - log_joint.amax(dim=1, keepdim=True)
        return Responsibilities(softmax_rows(shifted.div_(self.temperature)), None)


@dataclass(frozen=True)
class TopK:
    """The posterior restricted to each point's k most probable components, renormalised.

    Among all q whose support has at most k states this maximises the ELBO (Lücke & Forster
    2019): for a fixed support S_i the renormalised posterior is optimal, with ELBO
    log p(x_i) + log p(z_i in S_i | x_i), largest when S_i holds the k largest entries. Only
    (n, k) indices and weights are kept. k = 1 is ``Delta`` (same tie-breaking: lowest index
    first); k = K is exact.

    Args:
        k: states kept per point, >= 1 (and <= K, checked against the table).
    """

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise MixemError(f"topk:k needs an integer k >= 1, got {self.k!r}")

    @property
    def name(self) -> str:
        return f"topk:{self.k}"

    @property
    def hard(self) -> bool:
        return self.k == 1

    def e_step(self, log_joint: Tensor) -> Responsibilities:
        """``log_joint`` (n, K) -> weights (n, k) over indices (n, k), largest first."""
        n_components = log_joint.shape[1]
        if self.k > n_components:
            raise MixemError(f"topk:{self.k} needs 1 <= k <= K = {n_components}")
        if self.k == 1:  # the first maximum, as Delta: topk:1 is exactly delta
            indices = max_rows(log_joint)[1][:, None]
        else:
            indices = _top_indices(log_joint, self.k)
        kept = log_joint.gather(1, indices)
        return Responsibilities(torch.softmax(kept, dim=1), indices)


def _top_indices(log_joint: Tensor, k: int) -> Tensor:
    """(n, k) columns of the k largest entries of each row of ``log_joint`` (n, K), largest
    first, ties to the lowest column.

    ``torch.topk`` is fast but promises no order among equal values; a stable sort keeps the
    rule but costs 20x more at K = 1024. Only a row with equal values among its k + 1 largest
    can differ, so those rows (rare in floating point) are sorted, the rest come from topk.
    """
    top, indices = torch.topk(log_joint, min(k + 1, log_joint.shape[1]), dim=1)
    indices = indices[:, :k]
    # NaN != NaN: a row with NaN among them is sorted too (torch.sort puts NaN first, stably)
    ties = (top[:, 1:] == top[:, :-1]).any(1) | top.isnan().any(1)
    if bool(ties.any()):
        order = torch.sort(log_joint[ties], dim=1, descending=True, stable=True).indices
        indices[ties] = order[:, :k]
    return indices


@dataclass(frozen=True)
class Sampled:
    """One-hot at z_i drawn from the posterior (stochastic EM, Celeux & Diebolt 1985).

    The draws come from a generator owned by the family and seeded once, so a fit is
    reproducible from ``seed`` alone (for a given chunk size: chunks are drawn in order).
    Reusing one instance continues its stream; make a new one to restart it.

    Args:
        seed: seed of the CPU generator the uniforms are drawn from.
    """

    seed: int = 0
    generator: torch.Generator = field(
        init=False, repr=False, compare=False, default_factory=torch.Generator
    )

    def __post_init__(self) -> None:
        self.generator.manual_seed(self.seed)

    @property
    def name(self) -> str:
        return "sampled" if self.seed == 0 else f"sampled:{self.seed}"

    @property
    def hard(self) -> bool:
        return True

    def e_step(self, log_joint: Tensor) -> Responsibilities:
        """One-hot q: ``log_joint`` (n, K) -> weights (n, 1) at indices (n, 1).

        Inverse-CDF sampling with one uniform per point, drawn on the CPU so the stream does
        not depend on the device. With ``right=True`` a component of probability 0 is never
        chosen (its cumulative sum equals its predecessor's).
        """
        cumulative = torch.cumsum(softmax_rows(log_joint), dim=1)
        uniforms = torch.rand(log_joint.shape[0], 1, generator=self.generator, dtype=torch.float64)
        targets = uniforms.to(log_joint) * cumulative[:, -1:]
        labels = torch.searchsorted(cumulative, targets, right=True)[:, 0]
        return Responsibilities.one_hot(labels.clamp_max(log_joint.shape[1] - 1), log_joint.dtype)


@dataclass(frozen=True)
class Anneal:
    """Deterministic annealing: ``Tempered(T_t)`` at E-step t, T cooled geometrically.

    T_t = T0 (T1 / T0)^(t / steps) for t = 0..steps (T_steps = T1), then the schedule ends:
    at T1 = 1 with the exact posterior (``Categorical``: classical EM, Ueda & Nakano 1998),
    at T1 < 1 by quenching to T -> 0 (``Delta``: hard EM, Rose 1998).

    Args:
        t0: starting temperature, finite and >= t1.
        t1: last temperature, 0 < t1 <= 1.
        steps: E-steps from T0 to T1, >= 1.
    """

    t0: float
    t1: float
    steps: int

    def __post_init__(self) -> None:
        if not (0 < self.t1 <= 1):
            raise MixemError(
                f"anneal T0:T1:steps needs 0 < T1 <= 1 (1 ends at categorical, below 1 ends "
                f"hard at delta), got T1={self.t1!r}"
            )
        if not (self.t1 <= self.t0 < math.inf):
            raise MixemError(f"anneal T0:T1:steps needs T1 <= T0 < inf, got T0={self.t0!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise MixemError(f"anneal T0:T1:steps needs an integer steps >= 1, got {self.steps!r}")

    @property
    def name(self) -> str:
        return f"anneal:{format_number(self.t0)}:{format_number(self.t1)}:{self.steps}"

    def temperature(self, iteration: int) -> float:
        """T at E-step ``iteration`` (0 for the quench after a schedule ending below 1)."""
        if iteration >= self.steps:
            return self.t1 if iteration == self.steps or self.t1 == 1 else 0.0
        return self.t0 * (self.t1 / self.t0) ** (iteration / self.steps)

    def __call__(self, iteration: int) -> Categorical | Tempered | Delta:
        """The family of E-step ``iteration`` (the E-step after that many M-steps)."""
        temperature = self.temperature(iteration)
        if temperature == 0:
            return Delta()
        return Categorical() if temperature == 1 else Tempered(temperature)
