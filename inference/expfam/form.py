"""The exponential-family form of an enumerated component site, and what every converter shares.

An observed site "x" under parallel enumeration of "z" (enumeration dim -2, data plate dim -1)
holds a distribution of batch shape (K, n) whose parameters are indexed by z and broadcast along
the data plate with stride 0. ``unwrap`` strips the wrappers Pyro puts around it (Independent,
ExpandedDistribution, a MaskedDistribution without a tensor mask) and ``param`` reads one
parameter back as one value per component, refusing any that reaches the data (varies along n).
Converters describe their family as a few ``Part``s (a statistic and its natural parameter);
``assemble`` concatenates them, folding a part whose natural parameter is the same fixed value
for every component into the base measure (it adds the same number to every column of a row).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from torch import Tensor
from torch.distributions import Distribution, Independent


class ExpFamForm(NamedTuple):
    """log p(x_i | z=c) = statistic(x)[i] @ natural[c] - log_normaliser[c] + base_log_measure(x)[i].

    family: "normal", "mvn", "bernoulli", "binomial", "poisson", "categorical",
        "onehot_categorical", "gamma", "exponential", "beta" or "vmf".
    natural: (K, F) eta_c. log_normaliser: (K,) A(eta_c).
    shift: (D,) r, for location families whose statistic is of x - r; None otherwise.
    statistic: x (n, D) (or (n,) for one feature) -> (n, F), the "- r" included.
    base_log_measure: x (n, D) -> (n,) log h(x).
    moments: sum_T (K, F) = sum_i q_ic T(x_i) -> the named sums an M-step reads.
    linear: T(x) is x itself less ``shift`` (when there is one), so a kernel may read the data
        (n, D) directly instead of a copy of T(x).
    codes_of: for statistics that are one-hot codes (categorical): x (n, D) -> (n, D) int32
        codes in 0..C-1 with statistic(x)[i, d C + codes[i, d]] = 1 and 0 elsewhere (F = D C),
        so a kernel may read the codes instead of T(x); None for every other family.
    squares: T(x) = (x - shift, (x - shift)^2), F = 2 D in that order (the Normal with its
        scales kept), so a kernel may build T from the data (n, D) block by block instead of
        reading a copy of T(x); False for every other family.
    """

    family: str
    natural: Tensor
    log_normaliser: Tensor
    shift: Tensor | None
    statistic: Callable[[Tensor], Tensor]
    base_log_measure: Callable[[Tensor], Tensor]
    moments: Callable[[Tensor], dict[str, Tensor]]
    linear: bool = False
    codes_of: Callable[[Tensor], Tensor] | None = None
    squares: bool = False


class Leaf(NamedTuple):
    """The innermost distribution of a site and the shape its parameters are broadcast to.

    shape: (K, n) + features: the leaf's batch shape once every expansion is applied, before
    Independent reinterprets the features (no feature dim, or one).
    """

    dist: Distribution
    shape: tuple[int, ...]

    @property
    def n_components(self) -> int:
        return self.shape[0]

    @property
    def n_features(self) -> int:
        """D: the number of scalar features (1 when no dim was reinterpreted)."""
        return int(torch.Size(self.shape[2:]).numel())


class Part(NamedTuple):
    """One block of the statistic: ``statistic`` y (n, D) -> (n, F_j), ``natural`` (K, F_j).

    fold: the natural parameter is the same fixed value for every component, so the block goes
    into the base measure. unpack: (K, F_j) weighted sum -> the M-step's shape for ``name``.
    """

    name: str
    statistic: Callable[[Tensor], Tensor]
    natural: Tensor
    fold: bool = False
    unpack: Callable[[Tensor], Tensor] = lambda s: s


def identity(y: Tensor) -> Tensor:
    """T(y) = y; ``assemble`` recognises it to mark a form ``linear``."""
    return y


def unwrap(fn: object, n_components: int) -> Leaf | None:
    """The leaf of ``fn`` (batch (K, n) or (K, 1)) and its broadcast shape; None if not readable."""
    reinterpreted, d = 0, fn
    while True:
        if isinstance(d, Independent):
            reinterpreted += d.reinterpreted_batch_ndims
            d = d.base_dist
        elif isinstance(d, ExpandedDistribution):
            d = d.base_dist
        elif isinstance(d, MaskedDistribution):
            mask = d._mask
            # a tensor mask is data (per point); False zeroes the site: neither is a density
            if not (isinstance(mask, bool) and mask):
                return None
            d = d.base_dist
        else:
            break
    if not isinstance(fn, Distribution) or not isinstance(d, Distribution):
        return None
    batch = tuple(fn.batch_shape)
    if len(batch) != 2 or batch[0] != n_components:
        return None
    full = batch + tuple(fn.event_shape)
    own = tuple(d.event_shape)
    shape = full[: len(full) - len(own)]
    # only the feature dim may be reinterpreted, and the leaf's own event must be the site's tail
    if reinterpreted > 1 or len(shape) != 2 + reinterpreted or full[len(shape) :] != own:
        return None
    return Leaf(d, shape)


def param(leaf: Leaf, value: object, event_ndim: int = 0) -> Tensor | None:
    """``value`` (leaf batch + param event) as (K, *features, *param event), one row per component.

    None when it is not a tensor, does not broadcast to the leaf's shape, or varies along the
    data plate (size > 1 with a stride != 0 there: the data reach the distribution).
    """
    if not isinstance(value, Tensor) or value.dim() < event_ndim:
        return None
    target = leaf.shape + tuple(value.shape[value.dim() - event_ndim :])
    try:
        full = value.expand(target)
    except RuntimeError:
        return None
    if full.shape[1] > 1 and full.stride(1) != 0:
        return None
    return full.select(1, 0)


def shared_fixed(value: Tensor) -> bool:
    """True when ``value`` (K, ...) is the same for every component and is not learned."""
    return not value.requires_grad and bool((value == value[:1]).all())


def rows(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x (n, D) or (n,) -> (n, D) in ``dtype``."""
    return x.reshape(x.shape[0], -1).to(dtype)


def constant(value: float) -> Callable[[Tensor], Tensor]:
    """A base measure log h(y) = ``value`` for every row of y (n, ...)."""
    return lambda y: torch.full((y.shape[0],), value, dtype=y.dtype, device=y.device)


def assemble(
    family: str,
    parts: list[Part],
    log_normaliser: Tensor,
    prepare: Callable[[Tensor], Tensor],
    base: Callable[[Tensor], Tensor],
    shift: Tensor | None = None,
    codes_of: Callable[[Tensor], Tensor] | None = None,
    squares: bool = False,
) -> ExpFamForm:
    """The form of ``parts`` with ``log_normaliser`` (K,).

    prepare: x (n, D) -> y, what each part's statistic reads (cast, "- r", codes).
    base: y -> (n,) the family's own log h, before folded parts are added.
    codes_of: see ``ExpFamForm``; the parts' statistics must be that one-hot.
    squares: the parts are (identity, square) of y = x - shift (see ``ExpFamForm``); kept in
        the form only when neither is folded.
    """
    kept = [p for p in parts if not p.fold]
    folded = [p for p in parts if p.fold]
    widths = [int(p.natural.shape[1]) for p in kept]
    K = log_normaliser.shape[0]
    natural = torch.cat([p.natural for p in kept], 1) if kept else log_normaliser.new_zeros(K, 0)
    # a probability of 0 (a category a component never takes) has eta = -inf, and the GEMM's
    # 0 * -inf of every other row would be NaN: the lowest finite value scaled so that F of
    # them still sum to a finite number, which gives the same zero weight
    floor = torch.finfo(natural.dtype).min / (natural.shape[1] + 1)
    natural = torch.where(natural == -torch.inf, floor, natural)

    def statistic(x: Tensor) -> Tensor:
        y = prepare(x)
        if not kept:
            return natural.new_zeros(y.shape[0], 0)
        return torch.cat([p.statistic(y) for p in kept], 1)

    def base_log_measure(x: Tensor) -> Tensor:
        y = prepare(x)
        h = base(y)
        for p in folded:  # the same eta for every component: one matrix-vector product
            h = h + p.statistic(y) @ p.natural[0]
        return h

    def moments(sum_T: Tensor) -> dict[str, Tensor]:
        out = {p.name: p.unpack(s) for p, s in zip(kept, sum_T.split(widths, 1), strict=True)}
        if shift is not None:
            out["shift"] = shift
        return out

    linear = len(kept) == 1 and kept[0].statistic is identity
    return ExpFamForm(
        family,
        natural,
        log_normaliser,
        shift,
        statistic,
        base_log_measure,
        moments,
        linear,
        codes_of if kept and not folded else None,
        squares and len(kept) == 2 and not folded,
    )
