"""The sites of an enumerated trace inside the data plate, and the (n, K) table they sum to.

``inference.enumerate`` traces the model; this module turns the trace into terms (a site's
distribution and value) and evaluates them on a chunk of rows: the full (K, n) terms and the
broadcast ones (the prior's (K, 1)) are summed in one pass, or, when the observed distribution
is an exponential family (``inference.expfam``), the broadcast ones go into its GEMM's bias and
the table costs no pass beyond making it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from pyro.distributions import MaskedDistribution
from pyro.distributions.util import is_identically_one, scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from inference.errors import MixemError
from inference.expfam import recognise

ASSIGNMENT_SITE = "z"
OBSERVED_SITE = "x"
DATA_PLATE = "data"


class Term(NamedTuple):
    """One site of an enumerated trace inside the data plate, ready to be evaluated.

    ``value`` is None for the observed site that observes the chunk itself: its value is the
    rows the term is evaluated on, so a trace of one chunk serves every chunk of its length.
    """

    fn: Any
    value: Tensor | None
    scale: Any
    mask: Any
    args: tuple
    kwargs: dict


def plate_terms(trace: Any, x: Tensor) -> tuple[list[Term], bool]:
    """The data plate's sites of ``trace`` (a trace of the chunk ``x``), checked, and whether
    they serve other chunks of the same length: the data reach them only as the observed value
    (``x`` itself), and no site carries a per-point scale or mask, on the site or inside its
    distribution (``dist.mask``), which could come from the data."""
    terms, reusable = [], True
    for name in trace.stochastic_nodes + trace.observation_nodes:
        site: Any = trace.nodes[name]
        if site_is_subsample(site):
            continue
        if not any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"]):
            raise MixemError(
                f"site {name!r} is outside pyro.plate({DATA_PLATE!r}); a mixture model here "
                "has only per-point sites (put global parameters in PyroParams)"
            )
        if name != ASSIGNMENT_SITE and name in trace.stochastic_nodes:
            raise MixemError(f"latent site {name!r}: only {ASSIGNMENT_SITE!r} may be latent")
        observes_chunk = site["is_observed"] and site["value"] is x
        reusable &= _is_scalar(site["scale"]) and _is_fixed_mask(site["mask"])
        reusable &= not _masks_inside(site["fn"])
        reusable &= observes_chunk or not site["is_observed"]
        value = None if observes_chunk else site["value"]
        terms.append(
            Term(site["fn"], value, site["scale"], site["mask"], site["args"], site["kwargs"])
        )
    return terms, reusable


def _is_scalar(scale: Any) -> bool:
    return isinstance(scale, (int, float)) or (isinstance(scale, Tensor) and scale.dim() == 0)


def _is_fixed_mask(mask: Any) -> bool:
    return mask is None or isinstance(mask, bool)


def _masks_inside(fn: Any) -> bool:
    """True when a wrapper of ``fn`` (expanded, independent, masked ...) masks by a tensor."""
    while fn is not None:
        if isinstance(fn, MaskedDistribution) and not _is_fixed_mask(fn._mask):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def sum_terms(
    terms: list[Term], x: Tensor, K: int, fixed: dict[int, Tensor] | None = None
) -> Tensor:
    """(n, K) sum of the terms' log-densities on the chunk ``x`` (n, D).

    The terms that are already (K, n) (the observation's, usually) are added to the small ones
    (the prior's (K, 1)) in one pass, so a chunk's table costs a single extra read and write
    whatever the model; none when the observation's distribution takes the small terms into its
    GEMM's bias (an exponential family, ``_plus_method``). The result is a new tensor, or (a
    single term with nothing to add) that term's own log-density, in the memory layout of the
    largest term, so an (n, K) GEMM table comes back contiguous; no site's log-density is
    written to. ``fixed``: kept with a trace
    that serves several chunks; the log-densities of the sites that do not observe the chunk
    (the same for every chunk: the prior's) are kept there after their first evaluation.
    """
    n = x.shape[0]
    full: list[Tensor] = []
    small: list[Tensor] = []
    folding, plus = None, None
    for index, term in enumerate(terms):
        if folding is None and (plus := _plus_method(term, K)) is not None:
            folding = term  # evaluated last, with the small terms in hand
            continue
        log_prob = _fixed_log_prob(term, index, fixed) if fixed is not None else None
        if log_prob is None:
            log_prob = _term_log_prob(term, x)
        # an expanded view (stride 0) is small in memory: it joins the broadcast terms; with
        # one point every term is (K, 1), and all of them are the small kind
        is_full = log_prob.shape == (K, n) and 0 not in log_prob.stride() and n > 1
        (full if is_full else small).append(log_prob if is_full else _compact(log_prob))
    if folding is not None:
        per_component = _per_component(small, K, x)
        folded = None if per_component is None or plus is None else plus(x, per_component)
        if folded is not None:
            small = []
        full.insert(0, folded if folded is not None else _term_log_prob(folding, x))
    return _add_terms(full, small, K, n).T


def _fixed_log_prob(term: Term, index: int, fixed: dict[int, Tensor]) -> Tensor | None:
    """The log-density of a site that does not observe the chunk, from ``fixed`` or computed
    and kept there."""
    if term.value is None:
        return None
    if index not in fixed:
        fixed[index] = _term_log_prob(term, term.value)
    return fixed[index]


def _plus_method(term: Term, K: int) -> Any:
    """``(x (n, D), per_component (K,)) -> (K, n)`` log-density of the observed site plus the
    other sites' per-component terms, when it may take them (the site observes the chunk,
    unscaled, unmasked) and it is an exponential family (``inference.expfam``): one GEMM
    T(x) eta^T with those terms in its bias."""
    if term.value is not None or term.mask is not None or not is_identically_one(term.scale):
        return None
    form = recognise(term.fn, K)
    if form is None:
        return None

    def plus(x: Tensor, per_component: Tensor) -> Tensor:
        # the terms' mean joins log h(x): with a uniform prior the components' own numbers,
        # T(x) eta_c - A_c, stay as they are, so exact ties stay exact (see ModelForm.split_bias)
        mean = per_component.mean()
        bias = (per_component - mean) - form.log_normaliser
        table = torch.addmm(bias, form.statistic(x), form.natural.T)
        return table.add_((form.base_log_measure(x) + mean)[:, None]).T

    return plus


def _per_component(small: list[Tensor], K: int, like: Tensor) -> Tensor | None:
    """(K,) sum of the small terms when each is constant along the points ((K, 1), (1, 1) or a
    scalar); None when one varies along the points (it is no per-component bias)."""
    total = torch.zeros(K, dtype=like.dtype, device=like.device)
    for term in small:
        if term.dim() > 2 or (term.dim() >= 1 and term.shape[-1] != 1):
            return None
        total = total + term.reshape(-1)
    return total


def _term_log_prob(term: Term, x: Tensor) -> Tensor:
    """A site's log-density as ``Trace.compute_log_prob`` gives it (scaled and masked), on the
    chunk ``x`` for the observed site, without the scalar sum Pyro also takes of each site: that
    is a pass over the whole table."""
    value = x if term.value is None else term.value
    log_prob = term.fn.log_prob(value, *term.args, **term.kwargs)
    return scale_and_mask(log_prob, term.scale, term.mask)


def _add_terms(full: list[Tensor], small: list[Tensor], K: int, n: int) -> Tensor:
    """(K, n) sum of the (K, n) terms and the broadcast ones, in one pass."""
    small_sum: Tensor | float = sum(small, 0.0)
    if not full:
        return torch.as_tensor(small_sum).expand(K, n).clone()
    if not small and len(full) == 1:
        return full[0]
    # add in the memory order of the first term: a (K, n) view of an (n, K) table added as
    # (K, n) would walk memory with stride K (measured 20x slower)
    flip = full[0].T.is_contiguous()
    table = (full[0].T + _t(small_sum)).T if flip else full[0] + small_sum
    for term in full[1:]:
        table.add_(term)
    return table


def _compact(term: Tensor) -> Tensor:
    """``term`` with its broadcast (stride-0) dimensions cut to size 1: a view, for cheap sums."""
    index = tuple(
        slice(0, 1) if stride == 0 and size > 1 else slice(None)
        for size, stride in zip(term.shape, term.stride(), strict=True)
    )
    return term[index]


def _t(value: Tensor | float) -> Tensor | float:
    """Transpose of a 2-D tensor; a 0-D tensor or a float as is."""
    return value.T if isinstance(value, Tensor) and value.dim() == 2 else value
