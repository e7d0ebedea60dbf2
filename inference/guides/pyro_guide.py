"""The Pyro guide of any member of any family (what Pyro's ELBOs need to check ours)."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from inference.enumerate import ASSIGNMENT_SITE, DATA_PLATE
from inference.responsibilities import Responsibilities

# Finite stand-in for log 0 in a guide's logits: exp() of it is exactly 0, yet 0 * it is 0, not
# the NaN that 0 * -inf would give inside Pyro's enumerated ELBO.
_LOG_ZERO = -1e30


def pyro_guide(q: Responsibilities, n_components: int) -> Callable[[Tensor], None]:
    """A Pyro guide that draws ``"z"`` from ``q`` inside the ``"data"`` plate.

    One-hot members become ``dist.Delta`` at the chosen component (so ``Trace_ELBO`` is exact);
    others a ``Categorical`` marked for parallel enumeration (exact under ``TraceEnum_ELBO``).

    Args:
        q: responsibilities of the N points the guide will be called on.
        n_components: K.
    """
    one_hot = q.indices is not None and q.weights.shape[1] == 1

    def guide(x: Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            if one_hot and q.indices is not None:
                pyro.sample(ASSIGNMENT_SITE, dist.Delta(q.indices[:, 0]))
            else:
                probs = q.dense(n_components)
                logits = torch.where(probs > 0, probs.log(), probs.new_tensor(_LOG_ZERO))
                pyro.sample(
                    ASSIGNMENT_SITE,
                    dist.Categorical(logits=logits),
                    infer={"enumerate": "parallel"},
                )

    return guide


def is_exact_for_trace_elbo(q: Responsibilities) -> bool:
    """True when q is one-hot, so a single-sample ``Trace_ELBO`` is the exact ELBO."""
    return q.indices is not None and q.weights.shape[1] == 1
