"""``tempered:T``: q_i = softmax(log_joint[i] / T); deterministic annealing at a fixed T."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from inference.errors import MixemError
from inference.guides.spelling import format_number, parse_float, required_argument
from inference.reductions import RowFacts, softmax_and_facts
from inference.responsibilities import Responsibilities


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
        weights, facts = softmax_and_facts(shifted.div_(self.temperature))
        # of the facts of the tempered table, only q's labels are the E-step's record's
        return Responsibilities(weights, None, RowFacts(labels=facts.labels))


SYNTAX = "tempered:T (T > 0)"


def parse(spec: str, arg: str | None, n_components: int, seed: int) -> Tempered:
    """``tempered:T`` with T a finite number > 0."""
    allowed = "tempered:T with T a finite number > 0 (1 = categorical, T -> 0 tends to delta)"
    value = parse_float(required_argument(spec, arg, "a temperature", allowed))
    if value is None or not (0 < value < math.inf):
        raise MixemError(f"bad guide {spec!r}: {allowed}")
    return Tempered(value)
