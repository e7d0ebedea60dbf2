"""``topk:k``: the posterior on each point's k largest states, renormalised; truncated EM.

Its CLI name also spells the truncated search ``topk:k:G`` (``inference.guides.truncated``),
so the parser of ``topk`` lives there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from inference.errors import MixemError
from inference.reductions import RowFacts, row_summary
from inference.responsibilities import Responsibilities

SYNTAX = "topk:k (1 <= k <= K)"


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
        facts = None
        if self.k == 1:  # the first maximum, as Delta: topk:1 is exactly delta
            top, arg, lse = row_summary(log_joint)  # and, as Delta's, the record's facts
            indices, facts = arg[:, None], RowFacts(point_fit=top, log_evidence=lse)
        else:
            indices = _top_indices(log_joint, self.k)
        kept = log_joint.gather(1, indices)
        return Responsibilities(torch.softmax(kept, dim=1), indices, facts)


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
