"""``sampled[:SEED]``: q_i one-hot at a seeded draw from the posterior; stochastic EM."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from inference.errors import MixemError
from inference.guides.spelling import parse_int, required_argument
from inference.reductions import RowFacts, softmax_and_facts
from inference.responsibilities import Responsibilities


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
        weights, facts = softmax_and_facts(log_joint)
        cumulative = torch.cumsum(weights, dim=1)
        uniforms = torch.rand(log_joint.shape[0], 1, generator=self.generator, dtype=torch.float64)
        targets = uniforms.to(log_joint) * cumulative[:, -1:]
        labels = torch.searchsorted(cumulative, targets, right=True)[:, 0]
        labels = labels.clamp_max(log_joint.shape[1] - 1)
        known = RowFacts(log_evidence=facts.log_evidence)  # the softmax's, of the same table
        return Responsibilities.one_hot(labels, log_joint.dtype, known)


SYNTAX = "sampled[:SEED]"


def parse(spec: str, arg: str | None, n_components: int, seed: int) -> Sampled:
    """``sampled`` (the fit's ``seed``) or ``sampled:SEED`` with SEED an integer >= 0."""
    if arg is None:
        return Sampled(seed)
    allowed = "sampled or sampled:SEED with SEED an integer >= 0"
    value = parse_int(required_argument(spec, arg, "a seed", allowed))
    if value is None or value < 0:
        raise MixemError(f"bad guide {spec!r}: {allowed}")
    return Sampled(value)
