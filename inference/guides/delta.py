"""``delta``: q_i one-hot at the argmax of row i of the table; hard EM (K-means on the GMM)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from inference.guides.spelling import no_argument
from inference.reductions import RowFacts, row_summary
from inference.responsibilities import Responsibilities


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
        # row_summary: torch.argmax's scalar loop costs more than the GEMM that made the table;
        # the same pass takes the record's point fits (the maxima) and log evidence
        top, arg, lse = row_summary(log_joint)
        facts = RowFacts(point_fit=top, log_evidence=lse)
        return Responsibilities.one_hot(arg, log_joint.dtype, facts)


SYNTAX = "delta"


def parse(spec: str, arg: str | None, n_components: int, seed: int) -> Delta:
    """``delta``; it takes no argument."""
    no_argument(spec, arg, "delta")
    return Delta()
