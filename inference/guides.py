"""Guide families over the assignment site ``"z"``.

A family is a small object with a ``name``, a ``hard`` flag (its q is one-hot, so "no assignment
changed" is a fixed point of EM) and an ``e_step``: the member of the family that maximises the
ELBO given the table ``log_joint`` (n, K) with the parameters fixed. Its Pyro guide is built from
that member by ``pyro_guide``; the EM loop never needs anything else, so a new family is one
class (in ``inference.families`` or in user code) and no edit to ``em.py``. This module holds
the protocol, the parsing of CLI names and the Pyro guide of any member.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from inference.enumerate import ASSIGNMENT_SITE, DATA_PLATE
from inference.errors import MixemError
from inference.families import Anneal, Categorical, Delta, Sampled, Tempered, TopK
from inference.responsibilities import Responsibilities

__all__ = [
    "FAMILIES",
    "Anneal",
    "Categorical",
    "Delta",
    "GuideFamily",
    "Sampled",
    "Schedule",
    "Tempered",
    "TopK",
    "as_schedule",
    "parse_anneal",
    "parse_guide",
    "parse_schedule",
    "pyro_guide",
]


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
        """Best member of the family for a chunk; ``log_joint`` is (n, K). A softmax taken here
        (``reductions.softmax_rows``) may be written into memory that the next E-step reuses:
        a family that keeps it beyond the call must keep a copy."""
        ...


GUIDE_SYNTAX = (
    "delta, categorical, tempered:T (T > 0), topk:k (1 <= k <= K), topk:k:G (truncated search "
    "of G neighbours, G >= 0), sampled[:SEED]"
)
FAMILIES = ("delta", "categorical", "tempered:T", "topk:k", "sampled")

Schedule = Callable[[int], GuideFamily]
"""``iteration -> family`` for the E-step after that many M-steps (e.g. ``Anneal``)."""


def as_schedule(guide: GuideFamily | Schedule) -> Schedule:
    """A family as the constant schedule; a schedule as it is."""
    if isinstance(guide, GuideFamily):
        return lambda _iteration: guide
    return guide


def _argument(spec: str, what: str, allowed: str) -> str:
    _, _, arg = spec.partition(":")
    if not arg:
        raise MixemError(f"guide {spec!r} needs {what}: {allowed}")
    return arg


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_int(text: str) -> int | None:
    return int(text) if text.strip().lstrip("+-").isdigit() else None


def _tempered(spec: str) -> Tempered:
    allowed = "tempered:T with T a finite number > 0 (1 = categorical, T -> 0 tends to delta)"
    value = _parse_float(_argument(spec, "a temperature", allowed))
    if value is None or not (0 < value < math.inf):
        raise MixemError(f"bad guide {spec!r}: {allowed}")
    return Tempered(value)


def _topk(spec: str, n_components: int) -> GuideFamily:
    allowed = (
        f"topk:k or topk:k:G with k an integer, 1 <= k <= K = {n_components}, and G an "
        "integer >= 0 (the neighbours a truncated search visits around each kept component)"
    )
    k_text, _, g_text = _argument(spec, "k", allowed).partition(":")
    value = _parse_int(k_text)
    if value is None or not (1 <= value <= n_components):
        raise MixemError(f"bad guide {spec!r}: {allowed}")
    if not g_text:
        return TopK(value)
    neighbours = _parse_int(g_text)
    if neighbours is None or neighbours < 0:
        raise MixemError(f"bad guide {spec!r}: {allowed}")
    from inference.truncated import TruncatedTopK  # it builds on the EM loop, which imports us

    return TruncatedTopK(value, neighbours)


def _sampled(spec: str, seed: int) -> Sampled:
    if ":" not in spec:
        return Sampled(seed)
    allowed = "sampled or sampled:SEED with SEED an integer >= 0"
    value = _parse_int(_argument(spec, "a seed", allowed))
    if value is None or value < 0:
        raise MixemError(f"bad guide {spec!r}: {allowed}")
    return Sampled(value)


def parse_guide(spec: str, n_components: int, seed: int = 0) -> GuideFamily:
    """A family from its CLI name ``NAME[:ARG]``.

    Args:
        spec: e.g. ``"delta"``, ``"categorical"``, ``"tempered:0.5"``, ``"topk:2"``, ``"sampled"``.
        n_components: K (bounds ``topk``'s k).
        seed: ``sampled``'s seed when the spec names none.
    Raises:
        MixemError: a one-line message with the allowed range.
    """
    name, colon, _ = spec.strip().partition(":")
    spec = spec.strip()
    if name in ("delta", "categorical") and colon:
        raise MixemError(f"guide {name!r} takes no argument, got {spec!r}")
    if name == "delta":
        return Delta()
    if name == "categorical":
        return Categorical()
    if name == "tempered":
        return _tempered(spec)
    if name == "topk":
        return _topk(spec, n_components)
    if name == "sampled":
        return _sampled(spec, seed)
    raise MixemError(f"unknown guide {spec!r}; choose one of: {GUIDE_SYNTAX}")


def parse_anneal(spec: str) -> Anneal:
    """The schedule of ``--anneal T0:T1:steps`` (or ``anneal:T0:T1:steps``); see ``Anneal``."""
    allowed = (
        "T0:T1:steps with T0 >= T1 > 0 numbers, T1 <= 1 (1 ends at categorical, below 1 "
        "ends hard at delta) and steps an integer >= 1"
    )
    parts = spec.removeprefix("anneal:").split(":")
    if len(parts) != 3:
        raise MixemError(f"bad anneal schedule {spec!r}: expected {allowed}")
    t0, t1, steps = _parse_float(parts[0]), _parse_float(parts[1]), _parse_int(parts[2])
    if t0 is None or t1 is None or steps is None:
        raise MixemError(f"bad anneal schedule {spec!r}: expected {allowed}")
    try:
        return Anneal(t0, t1, steps)
    except MixemError as err:
        raise MixemError(f"bad anneal schedule {spec!r}: expected {allowed}") from err


def parse_schedule(spec: str, n_components: int, seed: int = 0) -> GuideFamily | Anneal:
    """``parse_guide``, or an ``Anneal`` for ``anneal:T0:T1:steps`` (a ``--guides`` entry)."""
    if spec.strip().startswith("anneal:"):
        return parse_anneal(spec.strip())
    return parse_guide(spec, n_components, seed)


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
