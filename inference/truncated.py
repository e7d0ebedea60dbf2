"""Truncated E-steps for the ``topk`` family, with a cost per iteration sublinear in K.

Forster & Lücke (2018): point i keeps its candidate set K_i (k components, from the previous
E-step) and searches only S_i = K_i and, for each c in K_i, G_c: the ``neighbours`` clusters
nearest c, recomputed from the current parameters every iteration (O(K^2)). It evaluates
log p(x_i, z_i = c) for c in S_i only (m = k (G + 1) entries, duplicates included, not K), by
tracing the Pyro model with ``"z"`` conditioned on the (m, n) candidates, keeps the k largest
and sets q_i to the renormalised posterior on them, as ``TopK`` does on the full table.

``TruncatedTopK(k, G)`` is a guide family (``--guide topk:k:G``): its ``e_step`` is the full
``TopK(k)`` one, which ``inference.em.fit`` runs first, and its ``search`` the truncated one,
which the loop runs instead of a full E-step after that. ``fit_truncated`` is a shorthand.

The ELBO, sum_i log sum_{c in K_i} p(x_i, c), never decreases (up to rounding) while no empty
component is refilled: S_i contains the old K_i, and the M-step raises it over theta. A refill
(``n_relocated > 0``) moves points by hand and may lower it. The log evidence needs all K
entries: exact at iteration 0 (a full E-step) and every ``evidence_every`` iterations (one more
full pass, timed with its iteration); NaN in the other records, as is the KL gap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from inference import native, workspace
from inference.distributed import LOCAL, Reducer
from inference.elbo import log_evidence_from_table
from inference.em import EStep, FitResult, fit
from inference.enumerate import ASSIGNMENT_SITE as SITE
from inference.enumerate import DATA_PLATE as PLATE
from inference.enumerate import DEFAULT_CHUNK_SIZE, isolated_params, iter_log_joint
from inference.errors import MixemError
from inference.guides import TopK
from inference.observed import ModelForm, model_form
from inference.responsibilities import Responsibilities
from inference.trace import TraceRecord


def _is_count(value: object, least: int) -> bool:
    """An int (not a bool) >= ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class TruncatedTopK:
    """``TopK(k)`` computed on each point's search space only (see the module docstring).

    Args:
        k: components kept per point, 1 <= k <= K.
        neighbours: G, clusters searched around each kept one, >= 0; G >= K - 1 searches
            everything (equal to ``TopK(k)`` on the full table), G = 0 never changes K_i.
    """

    k: int
    neighbours: int
    evidence_every: int = 0
    chunk_rows: int = 65536

    def __post_init__(self) -> None:
        if not _is_count(self.k, 1):
            raise MixemError(f"truncated topk needs an integer k >= 1, got k={self.k!r}")
        if not _is_count(self.neighbours, 0):
            raise MixemError(f"truncated topk needs neighbours G >= 0, got {self.neighbours!r}")
        if not _is_count(self.evidence_every, 0) or not _is_count(self.chunk_rows, 1):
            raise MixemError(
                f"truncated topk needs evidence_every >= 0 and chunk_rows >= 1, got "
                f"{self.evidence_every!r} and {self.chunk_rows!r}"
            )

    hard = property(lambda self: self.k == 1)  # as TopK: k = 1 is a one-hot q

    @property
    def name(self) -> str:
        return f"topk:{self.k}:{self.neighbours}"

    def e_step(self, log_joint: Tensor) -> Responsibilities:
        """The full E-step (the fit's first): ``TopK(k)`` on the whole table (n, K)."""
        return TopK(self.k).e_step(log_joint)

    def search(
        self,
        model: Any,
        x: Tensor,
        previous: EStep,
        iteration: int,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        reducer: Reducer = LOCAL,
    ) -> EStep:
        """The truncated E-step ``inference.em.fit`` runs after the first: from ``previous``'s
        candidate sets over ``x`` (N, D); its log evidence is NaN unless ``iteration`` is a
        multiple of ``evidence_every`` (then one full pass of ``chunk_size`` rows computes it).
        ELBO and log evidence are totals over the workers of ``reducer``."""
        if not isinstance(x, Tensor):
            raise MixemError(
                f"{self.name} searches data held in memory; drop --stream (or use topk:{self.k})"
            )
        assert previous.q.indices is not None
        est = truncated_e_step(self, model, x, previous.q.indices, self.chunk_rows)
        evidence = math.nan
        if self.evidence_every and iteration % self.evidence_every == 0:
            tables = iter_log_joint(model, x, chunk_size, reuse=True)
            evidence = sum(float(log_evidence_from_table(table)) for _, table in tables)
        totals = reducer.sum(torch.tensor([est.elbo, evidence], dtype=torch.float64))
        return est._replace(elbo=float(totals[0]), log_evidence=float(totals[1]))

    def neighbourhoods(self, model: Any, indices: Tensor) -> Tensor:
        """(K, G) the G = min(G, K - 1) clusters nearest each (itself excluded), by distance
        between the model's ``locs`` (K, D), else by co-occurrence in ``indices`` (N, k)."""
        n_components = int(model.n_components)
        g = min(self.neighbours, n_components - 1)
        if g == 0:
            return indices.new_empty(n_components, 0)
        with isolated_params(), torch.no_grad():
            locs = getattr(model, "locs", None)
        if isinstance(locs, Tensor) and locs.dim() == 2 and locs.shape[0] == n_components:
            locs = locs.detach()
            # -||a - b||^2 up to a constant per row a, which ranks a row's neighbours the same:
            # one O(K^2 D) GEMM (its rounding can only swap near-equal neighbours)
            closeness = torch.addmm(-locs.square().sum(1), locs, locs.T, alpha=2)
        elif self.k >= 2:  # how many points hold both clusters in their candidate sets
            pairs = indices[:, :, None] * n_components + indices[:, None, :]
            counts = torch.bincount(pairs.reshape(-1), minlength=n_components**2)
            closeness = counts.reshape(n_components, n_components).double()
        else:
            name = type(model).__name__
            raise MixemError(
                f"{name} has no locs (K, D) for neighbours: use k >= 2 (co-occurrence)"
            )
        closeness.fill_diagonal_(-torch.inf)
        # torch.topk: a stable sort of K rows of K costs ~60 ms at K = 1024
        return torch.topk(closeness, g, dim=1).indices

    def search_space(self, indices: Tensor, neighbourhoods: Tensor) -> Tensor:
        """(m, n) candidates, point-minor (reductions over them then run vectorised over n):
        each of ``indices`` (n, k) and its ``neighbourhoods`` (K, G); duplicates are kept
        (``select_top`` skips them)."""
        own = torch.arange(neighbourhoods.shape[0], device=indices.device)[:, None]
        table = torch.cat([own, neighbourhoods], 1).T.contiguous()  # (G + 1, K): c, its G
        flat = indices.T.reshape(-1)  # (k n,) contiguous: strided advanced indexing is 3x slower
        return table.index_select(1, flat).view(-1, indices.shape[0])  # (G + 1) k rows


def candidate_log_joint(
    model: Any, x: Tensor, candidates: Tensor, found: ModelForm | None = None
) -> Tensor:
    """(m, n) log p(x_i, z_i = candidates[j, i]); ``x`` is (n, D), ``candidates`` (m, n) int64.

    For an exponential family (``found``, the model's form) each entry is the dot product
    T(x_i) . eta_c + bias_c + log h(x_i), in C for float32 (no (m, n, F) gathered copy);
    otherwise one trace of the model with ``"z"`` conditioned on the candidates."""
    if found is not None:
        return _candidate_dots(found, x, candidates)
    conditioned = poutine.condition(model, data={SITE: candidates})
    trace = poutine.trace(conditioned).get_trace(x)
    if SITE not in trace.nodes:
        raise MixemError(f"the model has no sample site named {SITE!r}")
    total: Tensor | None = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not any(frame.name == PLATE for frame in site["cond_indep_stack"]):
            raise MixemError(f"site {name!r} is outside pyro.plate({PLATE!r})")
        # Trace.compute_log_prob's terms without its log_prob_sum (a pass more over each term)
        fn: Any = site["fn"]
        log_prob = fn.log_prob(site["value"], *site["args"], **site["kwargs"])
        term = scale_and_mask(log_prob, site["scale"], site["mask"])
        # into a reused (``workspace``) buffer when there is one: no fresh (m, n) sum
        reuse = workspace.is_reused(term) and term.shape == candidates.shape
        total = term if total is None else term.add_(total) if reuse else total + term
    if not isinstance(total, Tensor) or total.shape != candidates.shape:
        shape = tuple(getattr(total, "shape", ()))
        raise MixemError(f"site log-densities of shape {shape}, not (m, n) = {candidates.shape}")
    return total


def _candidate_dots(found: ModelForm, x: Tensor, candidates: Tensor) -> Tensor:
    form = found.form
    stats = form.statistic(x).contiguous()
    natural, bias = form.natural.detach().contiguous(), found.bias.contiguous()
    operands = (natural, stats, bias)
    if native.available() and all(
        t.dtype == torch.float32 and t.device.type == "cpu" for t in operands
    ):
        values = native.gathered_dots(
            natural, candidates.contiguous(), stats, bias, stats.new_empty(candidates.shape)
        )
    else:
        values = torch.stack([(natural[row] * stats).sum(1) + bias[row] for row in candidates])
    return values.add_(form.base_log_measure(x))


def select_top(values: Tensor, candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best distinct ``candidates`` (m, n) int64 by their ``values`` (m, n): kept (k, n)
    values and int64 ids (k, n), largest first, ties to the lowest id (as ``TopK``)."""
    open_ids = candidates.int()  # int32: torch's int64 min-reduction is ~20x slower
    values = values.clone() if k > 1 else values
    taken = torch.iinfo(torch.int32).max  # the id of a slot already chosen: never the minimum
    kept, ids = [], []
    for j in range(k):  # k passes of O(m n), reductions along m: cheaper than any sort
        best = values.amax(0)
        chosen = torch.where(values == best, open_ids, taken).amin(0)
        kept.append(best)
        ids.append(chosen)
        if j + 1 < k:  # every copy of the chosen id leaves (its value and its id)
            drop = open_ids == chosen
            values.masked_fill_(drop, -torch.inf)
            open_ids.masked_fill_(drop, taken)
    return torch.stack(kept), torch.stack(ids).long()


def summarise(kept: Tensor) -> tuple[Tensor, Tensor, float]:
    """q on the kept entries: ``kept`` (k, n) log-joints, largest first -> weights (k, n),
    point fits E_q[log p(x_i, z_i)] (n,) and the ELBO sum_i (fit_i + H(q_i))."""
    if kept.shape[0] == 1:  # a Delta q: weight 1, no entropy
        return torch.ones_like(kept), kept[0], float(kept.sum())
    # torch.softmax over a dimension of 2 or 3 runs a scalar loop (measured 6x slower)
    weights = (kept - kept[:1]).exp_()
    weights /= weights.sum(0)
    point_fit = torch.where(weights > 0, weights * kept, 0.0).sum(0)
    entropy = -torch.special.xlogy(weights, weights).sum(0)
    return weights, point_fit, float(point_fit.sum() + entropy.sum())


def truncated_e_step(
    family: TruncatedTopK, model: Any, x: Tensor, previous: Tensor, chunk_size: int
) -> EStep:
    """One truncated E-step over ``x`` (N, D) from the candidate sets ``previous`` (N, k)."""
    neighbourhoods = family.neighbourhoods(model, previous)
    found = model_form(model, x)  # an exponential family: candidates by dot products
    weights = x.new_empty(previous.shape)
    indices = torch.empty_like(previous)
    point_fit, elbo = x.new_empty(x.shape[0]), 0.0
    # reused buffers across chunks: fresh multi-MiB temporaries are paged in on every chunk
    with isolated_params(), torch.no_grad(), workspace.reusing():
        for start in range(0, x.shape[0], chunk_size):
            workspace.next_chunk()
            rows = slice(start, start + chunk_size)
            candidates = family.search_space(previous[rows], neighbourhoods)
            values = candidate_log_joint(model, x[rows], candidates, found)
            kept, ids = select_top(values, candidates, family.k)
            w, point_fit[rows], part = summarise(kept)
            weights[rows], indices[rows], elbo = w.T, ids.T, elbo + part
    q = Responsibilities(weights, indices)
    # labels: the first column, the largest (ties to the lowest id, as q.labels() but cheaper)
    # a copy: the EM loop may hand q's memory to a later E-step, and these labels must outlive it
    return EStep(q, indices[:, 0].clone(), point_fit, elbo, float("nan"))


def fit_truncated(
    model: Any,
    x: Tensor,
    k: int,
    neighbours: int,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    truncated_chunk_size: int = 65536,
    evidence_every: int = 0,
    m_step: str = "auto",
    callback: Callable[[TraceRecord], None] | None = None,
) -> FitResult:
    """Variational EM of ``model`` on ``x`` (N, D) with truncated ``topk:k`` E-steps.

    The first E-step is full (``TopK(k)`` on the whole table, ~1 s at (2e5, 16, 1024)): every
    K_i starts at the exact top k (a random start would spend iterations finding each point's
    clusters) and iteration 0 gets its log evidence. Then each iteration is an M-step
    (``inference.em.choose_m_step``) and a truncated E-step. Stops as ``inference.em.fit``
    does for ``TopK(k)``: with G >= K - 1 both fits are the same.

    Args:
        model: mixture following the site contract; updated in place.
        x: (N, D) data in memory.
        k: components kept per point; neighbours: G, see ``TruncatedTopK``.
        chunk_size: rows per full pass (table chunk_size x K) and M-step statistics, as ``fit``.
        truncated_chunk_size: rows per conditioned trace (memory ~4 (D + 4 m) bytes a row);
            large, as Pyro's per-trace cost (~0.6 ms) is paid per chunk.
        evidence_every: a full pass for the log evidence every so many iterations (0: only at
            iteration 0); the records in between have NaN log evidence and KL gap.
    """
    family = TruncatedTopK(k, neighbours, evidence_every, truncated_chunk_size)
    return fit(
        model,
        x,
        family,
        max_iter=max_iter,
        tol=tol,
        chunk_size=chunk_size,
        m_step=m_step,  # type: ignore[arg-type]
        callback=callback,
    )
