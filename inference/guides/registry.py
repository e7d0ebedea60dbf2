"""The CLI names of the guide families: one table, and the parsers that read it.

Each entry maps a name (the text before the first ``:``) to the family file's parser of its
argument and its syntax text; ``GUIDE_SYNTAX`` and ``FAMILIES`` are built from the table. A
new family is its file (a dataclass with ``name``, ``hard``, ``e_step``, plus ``parse`` and
``SYNTAX``) and one line here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple, cast

from inference.errors import MixemError
from inference.guides import amortised, anneal, categorical, delta, sampled, tempered, truncated
from inference.guides.anneal import Anneal
from inference.guides.protocol import GuideFamily

Parser = Callable[[str, str | None, int, int], GuideFamily | Anneal]
"""``(spec, argument, K, seed) -> member``: ``argument`` is the text after ``NAME:`` (None
when ``spec`` has no colon), K bounds ``topk``'s k, ``seed`` is ``sampled``'s default."""


class Entry(NamedTuple):
    """One CLI name: its parser, its syntax text, and whether it names a schedule."""

    parse: Parser
    syntax: str
    schedule: bool = False  # iteration -> family: only --anneal and --guides take one


REGISTRY: dict[str, Entry] = {
    "delta": Entry(delta.parse, delta.SYNTAX),
    "categorical": Entry(categorical.parse, categorical.SYNTAX),
    "tempered": Entry(tempered.parse, tempered.SYNTAX),
    "topk": Entry(truncated.parse_topk, truncated.SYNTAX),  # topk:k and topk:k:G
    "sampled": Entry(sampled.parse, sampled.SYNTAX),
    "amortised": Entry(amortised.parse_soft, amortised.SYNTAX),
    "amortised-delta": Entry(amortised.parse_delta, ""),  # its syntax is amortised's
    "anneal": Entry(anneal.parse, anneal.SYNTAX, schedule=True),
}

_FAMILY_ENTRIES = [entry for entry in REGISTRY.values() if not entry.schedule and entry.syntax]
GUIDE_SYNTAX = ", ".join(entry.syntax for entry in _FAMILY_ENTRIES)
# the first spelling of each, without its range or optional part: "tempered:T", "sampled"
FAMILIES = tuple(re.split(r"[ ,\[]", entry.syntax)[0] for entry in _FAMILY_ENTRIES)


def parse_guide(spec: str, n_components: int, seed: int = 0) -> GuideFamily:
    """A family from its CLI name ``NAME[:ARG]``.

    Args:
        spec: e.g. ``"delta"``, ``"categorical"``, ``"tempered:0.5"``, ``"topk:2"``, ``"sampled"``.
        n_components: K (bounds ``topk``'s k).
        seed: ``sampled``'s seed when the spec names none.
    Raises:
        MixemError: a one-line message with the allowed range.
    """
    spec = spec.strip()
    name, colon, arg = spec.partition(":")
    entry = REGISTRY.get(name)
    if entry is None or entry.schedule:
        raise MixemError(f"unknown guide {spec!r}; choose one of: {GUIDE_SYNTAX}")
    return cast(GuideFamily, entry.parse(spec, arg if colon else None, n_components, seed))


def parse_anneal(spec: str) -> Anneal:
    """The schedule of ``--anneal T0:T1:steps`` (or ``anneal:T0:T1:steps``); see ``Anneal``."""
    return cast(Anneal, REGISTRY["anneal"].parse(spec, spec.removeprefix("anneal:"), 0, 0))


def parse_schedule(spec: str, n_components: int, seed: int = 0) -> GuideFamily | Anneal:
    """``parse_guide``, or an ``Anneal`` for ``anneal:T0:T1:steps`` (a ``--guides`` entry)."""
    if spec.strip().startswith("anneal:"):
        return parse_anneal(spec.strip())
    return parse_guide(spec, n_components, seed)
