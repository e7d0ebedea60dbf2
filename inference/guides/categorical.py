"""``categorical``: q_i the exact posterior softmax(log_joint[i]); classical EM."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from inference.guides.spelling import no_argument
from inference.reductions import softmax_and_facts
from inference.responsibilities import Responsibilities


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
        weights, facts = softmax_and_facts(log_joint)  # in C: the whole record, same pass
        return Responsibilities(weights, None, facts)


SYNTAX = "categorical"


def parse(spec: str, arg: str | None, n_components: int, seed: int) -> Categorical:
    """``categorical``; it takes no argument."""
    no_argument(spec, arg, "categorical")
    return Categorical()
