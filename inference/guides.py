"""Guide families over the assignment site ``"z"``.

A family is a small object with a ``name``, a ``hard`` flag (its q is one-hot, so "no assignment
changed" is a fixed point of EM) and an ``e_step``: the member of the family that maximises the
ELBO given the table ``log_joint`` (n, K) with the parameters fixed. Its Pyro guide is built from
that member by ``pyro_guide``; the EM loop never needs anything else, so a new family is one
class here (or in user code) and no edit to ``em.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from inference.enumerate import ASSIGNMENT_SITE, DATA_PLATE
from inference.errors import MixemError
from inference.responsibilities import Responsibilities


class GuideFamily(Protocol):
    """What the EM loop needs from a family of variational distributions over ``"z"``."""

    @property
    def name(self) -> str:
        """CLI spelling, e.g. ``"delta"`` or ``"tempered:0.5"``."""
        ...

    @property
    def hard(self) -> bool:
        """True when every member is one-hot (unchanged labels are then a fixed point)."""
        ...

    def e_step(self, log_joint: Tensor) -> Responsibilities:
        """Best member of the family for a chunk; ``log_joint`` is (n, K)."""
        ...


@dataclass(frozen=True)
class Delta:
    """q(z_i) = Delta(c_i): one component per point, probability one.

    The ELBO of a Delta q is sum_i log p(x_i, c_i) (its entropy is 0), so the best member puts
    each c_i at the argmax of row i of the table; on the restricted GMM that is the nearest
    centroid. Ties go to the lowest index, as ``torch.argmax`` guarantees.
    """

    name: str = "delta"
    hard: bool = True

    def e_step(self, log_joint: Tensor) -> Responsibilities:
        return Responsibilities.one_hot(log_joint.argmax(dim=1), log_joint.dtype)


FAMILIES = ("delta",)


def parse_guide(spec: str, n_components: int) -> GuideFamily:
    """A family from its CLI name, e.g. ``"delta"``; ``n_components`` is K (bounds arguments)."""
    name, _, arg = spec.partition(":")
    if name == "delta" and not arg:
        return Delta()
    raise MixemError(f"unknown guide {spec!r}; choose one of: {', '.join(FAMILIES)}")


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
