"""``anneal:T0:T1:STEPS``: not a family but a schedule ``iteration -> family``.

``inference.em.fit`` accepts it in place of a family; the CLI spells it ``--anneal T0:T1:STEPS``
or, in ``--guides``, ``anneal:T0:T1:STEPS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inference.errors import MixemError
from inference.guides.categorical import Categorical
from inference.guides.delta import Delta
from inference.guides.spelling import format_number, parse_float, parse_int
from inference.guides.tempered import Tempered


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


SYNTAX = "anneal:T0:T1:STEPS"


def parse(spec: str, arg: str | None, n_components: int, seed: int) -> Anneal:
    """The schedule ``T0:T1:steps`` (``arg``, the text after ``anneal:``); see ``Anneal``."""
    allowed = (
        "T0:T1:steps with T0 >= T1 > 0 numbers, T1 <= 1 (1 ends at categorical, below 1 "
        "ends hard at delta) and steps an integer >= 1"
    )
    parts = (arg or "").split(":")
    if len(parts) != 3:
        raise MixemError(f"bad anneal schedule {spec!r}: expected {allowed}")
    t0, t1, steps = parse_float(parts[0]), parse_float(parts[1]), parse_int(parts[2])
    if t0 is None or t1 is None or steps is None:
        raise MixemError(f"bad anneal schedule {spec!r}: expected {allowed}")
    try:
        return Anneal(t0, t1, steps)
    except MixemError as err:
        raise MixemError(f"bad anneal schedule {spec!r}: expected {allowed}") from err
