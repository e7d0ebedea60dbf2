"""What the EM loop needs from a guide family, and schedules of families.

A family is a small object with a ``name``, a ``hard`` flag (its q is one-hot, so "no assignment
changed" is a fixed point of EM) and an ``e_step``: the member of the family that maximises the
ELBO given the table ``log_joint`` (n, K) with the parameters fixed. The EM loop never needs
anything else, so a new family is one class (a file of this package plus a line of
``registry``, or user code) and no edit to ``em.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor

from inference.responsibilities import Responsibilities


@runtime_checkable
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
        """Best member of the family for a chunk; ``log_joint`` is (n, K). What it took of the
        table on the way (point fits, logsumexps, labels) may come back as ``q.facts``, so
        that the E-step's record does not take it again."""
        ...


Schedule = Callable[[int], GuideFamily]
"""``iteration -> family`` for the E-step after that many M-steps (e.g. ``Anneal``)."""


def as_schedule(guide: GuideFamily | Schedule) -> Schedule:
    """A family as the constant schedule; a schedule as it is."""
    if isinstance(guide, GuideFamily):
        return lambda _iteration: guide
    return guide
