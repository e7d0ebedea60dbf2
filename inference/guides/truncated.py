"""Truncated E-steps for the ``topk`` family, with a cost per iteration sublinear in K.

Forster & Lücke (2018): point i keeps its candidate set K_i (k components, from the previous
E-step) and searches only S_i = K_i and, for each c in K_i, G_c: the ``neighbours`` clusters
nearest c, recomputed from the current parameters every iteration (O(K^2)). It evaluates
log p(x_i, z_i = c) for c in S_i only (m = k (G + 1) entries, duplicates included, not K), by
tracing the Pyro model with ``"z"`` conditioned on the (m, n) candidates, keeps the k largest
and sets q_i to the renormalised posterior on them, as ``TopK`` does on the full table.

``TruncatedTopK(k, G)`` is a guide family (``--guide topk:k:G``): its ``e_step`` is the full
``TopK(k)`` one, which ``inference.em.fit`` runs first, and its ``search`` the truncated one,
which the loop runs instead of a full E-step after that; its steps over the candidates are
in ``inference.guides.search``, and ``fit_truncated`` (``truncated_fit``) is a shorthand.

The ELBO, sum_i log sum_{c in K_i} p(x_i, c), never decreases (up to rounding) while no empty
component is refilled: S_i contains the old K_i, and the M-step raises it over theta. A refill
(``n_relocated > 0``) moves points by hand and may lower it. The log evidence needs all K
entries: exact at iteration 0 (a full E-step) and every ``evidence_every`` iterations (one more
full pass, timed with its iteration); NaN in the other records, as is the KL gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from inference.distributed import LOCAL, Reducer
from inference.enumerate import DEFAULT_CHUNK_SIZE, isolated_params, iter_log_joint
from inference.errors import MixemError
from inference.guides.search import candidate_log_joint, select_top, summarise
from inference.guides.spelling import parse_int, required_argument
from inference.guides.topk import SYNTAX as TOPK_SYNTAX
from inference.guides.topk import TopK
from inference.observed import model_form
from inference.reductions import logsumexp_rows
from inference.responsibilities import Responsibilities
from inference.state import EStep

SYNTAX = f"{TOPK_SYNTAX}, topk:k:G (truncated search of G neighbours, G >= 0)"


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
            tables = iter_log_joint(model, x, chunk_size)
            # log_evidence_from_table's sum, here: inference.elbo imports this package
            evidence = sum(float(logsumexp_rows(table).sum()) for _, table in tables)
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


def truncated_e_step(
    family: TruncatedTopK, model: Any, x: Tensor, previous: Tensor, chunk_size: int
) -> EStep:
    """One truncated E-step over ``x`` (N, D) from the candidate sets ``previous`` (N, k)."""
    neighbourhoods = family.neighbourhoods(model, previous)
    found = model_form(model, x)  # an exponential family: candidates by dot products
    weights = x.new_empty(previous.shape)
    indices = torch.empty_like(previous)
    point_fit, elbo = x.new_empty(x.shape[0]), 0.0
    with isolated_params(), torch.no_grad():
        for start in range(0, x.shape[0], chunk_size):
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


def parse_topk(spec: str, arg: str | None, n_components: int, seed: int) -> TopK | TruncatedTopK:
    """``topk:k`` (``TopK``) or ``topk:k:G`` (``TruncatedTopK``), 1 <= k <= K, G >= 0."""
    allowed = (
        f"topk:k or topk:k:G with k an integer, 1 <= k <= K = {n_components}, and G an "
        "integer >= 0 (the neighbours a truncated search visits around each kept component)"
    )
    k_text, _, g_text = required_argument(spec, arg, "k", allowed).partition(":")
    value = parse_int(k_text)
    if value is None or not (1 <= value <= n_components):
        raise MixemError(f"bad guide {spec!r}: {allowed}")
    if not g_text:
        return TopK(value)
    neighbours = parse_int(g_text)
    if neighbours is None or neighbours < 0:
        raise MixemError(f"bad guide {spec!r}: {allowed}")
    return TruncatedTopK(value, neighbours)
