"""Choosing K: parameter counts, information criteria and the sweep over K.

* ``n_parameters(model)``: the free parameters of a fitted mixture, one rule per model of
  ``models.MODELS`` (for ``gmm`` exactly scikit-learn ``GaussianMixture._n_parameters``); fixed
  weights are not counted.
* ``evidence_terms(model, x)``: one pass over the enumerated table for the log evidence
  log p(X | theta), the entropy of the posterior and the classification likelihood
  log p(X, z_hat | theta) at the MAP labels z_hat.
* ``criteria``: scikit-learn's BIC and AIC from the exact log evidence, and ICL (Biernacki et
  al. 2000): BIC + 2 sum_i H(p(z_i | x_i, theta)) for a soft guide; for a hard guide
  -2 log p(X, z_hat | theta) + n_parameters log N, the classification likelihood in place of
  the evidence (= BIC - 2 sum_i log p(z_hat_i | x_i, theta)).
* ``sweep``: fits every K with restarts (the best final ELBO kept) and keeps the best fit by the
  criterion; ``select_k`` is the same from Python with a model name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from inference.em import FitResult, fit
from inference.enumerate import DEFAULT_CHUNK_SIZE, iter_log_joint
from inference.errors import MixemError

CRITERIA = ("bic", "aic", "icl", "heldout")
COLUMNS = ["k", "log_likelihood", "elbo", "n_parameters", "bic", "aic", "icl"]
COLUMNS += ["heldout_log_likelihood", "seed"]


def _weights(model: Any) -> int:
    """K - 1 for learned mixing weights, 0 for fixed ones."""
    return model.n_components - 1 if getattr(model, "learn_weights", False) else 0


def n_parameters(model: Any) -> int:
    """Free parameters of ``model`` (a model of ``models.MODELS``, or one with its own
    ``n_parameters()`` method).

    Raises:
        MixemError: a model with no rule here and no ``n_parameters`` method.
    """
    import models

    own = getattr(model, "n_parameters", None)
    if callable(own):
        return int(own())
    k = int(model.n_components)
    if isinstance(model, models.RestrictedGMM):
        return k * int(model.locs.shape[1])
    if isinstance(model, models.GMM):
        d = int(model.locs.shape[1])
        covariance = {"full": k * d * (d + 1) // 2, "diag": k * d, "spherical": k}
        return k * d + covariance.get(model.covariance_type, d * (d + 1) // 2) + _weights(model)
    if isinstance(model, models.BernoulliMixture):
        return k * int(model.probs.shape[1]) + _weights(model)
    if isinstance(model, models.PoissonMixture):
        return k * int(model.rates.shape[1]) + _weights(model)
    if isinstance(model, models.CategoricalMixture):
        return k * sum(c - 1 for c in model.n_categories) + _weights(model)
    if isinstance(model, models.VMFMixture):
        concentrations = 1 if model.shared else k
        return k * (int(model.locs.shape[1]) - 1) + concentrations + _weights(model)
    raise MixemError(
        f"no parameter count for {type(model).__name__}; give it a method n_parameters() -> int"
    )


class EvidenceTerms(NamedTuple):
    """Sums over the rows: log_evidence = sum_i log p(x_i | theta); entropy = sum_i
    H(p(z_i | x_i, theta)); classification = sum_i log p(x_i, z_hat_i | theta) at the MAP
    z_hat_i (the first argmax, the Delta guide's label). n: the rows."""

    log_evidence: float
    entropy: float
    classification: float
    n: int


def evidence_terms(model: Any, x: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> EvidenceTerms:
    """The terms of the criteria for ``model`` on ``x`` (N, D), one chunk's table at a time."""
    evidence = entropy = classification = 0.0
    with torch.no_grad():
        for _, table in iter_log_joint(model, x, chunk_size):
            log_norm = table.logsumexp(dim=1, keepdim=True)
            log_post = table - log_norm
            evidence += float(log_norm.sum())
            entropy -= float(torch.special.xlogy(log_post.exp(), log_post.exp()).sum())
            classification += float(table.max(dim=1).values.sum())
    return EvidenceTerms(evidence, entropy, classification, int(x.shape[0]))


def criteria(terms: EvidenceTerms, n_params: int, hard: bool) -> dict[str, float]:
    """``bic``, ``aic`` (scikit-learn's) and ``icl`` (see the module docstring)."""
    log_n = math.log(terms.n)
    bic = -2 * terms.log_evidence + n_params * log_n
    icl = -2 * terms.classification + n_params * log_n if hard else bic + 2 * terms.entropy
    return {"bic": bic, "aic": -2 * terms.log_evidence + 2 * n_params, "icl": icl}


class Candidate(NamedTuple):
    """The kept fit at one K: its row of select.csv, the restart's seed and the fit."""

    row: dict[str, Any]
    seed: int
    result: FitResult


def is_better(row: dict[str, Any], best: dict[str, Any] | None, criterion: str) -> bool:
    """Lower BIC / AIC / ICL, or higher held-out log-likelihood, than ``best`` (first wins)."""
    if best is None:
        return True
    if criterion == "heldout":
        return bool(row["heldout_log_likelihood"] > best["heldout_log_likelihood"])
    return bool(row[criterion] < best[criterion])


def sweep(
    x: Tensor,
    ks: Iterable[int],
    build: Callable[[int, int], Any],
    guide_at: Callable[[int, int], Any],
    *,
    criterion: str = "bic",
    restarts: int = 1,
    seed: int = 0,
    heldout: Tensor | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_fit: Callable[[int, int], None] = lambda k, r: None,
    **fit_options: Any,
) -> tuple[list[dict[str, Any]], Candidate | None]:
    """Fit every K of ``ks`` ``restarts`` times (seeds ``seed``, ``seed + 1``, ...), keep the
    best final ELBO per K and, over K, the best fit by ``criterion``.

    Args:
        build: ``(k, seed) -> model`` (the start, e.g. k-means++ with that seed).
        guide_at: ``(k, seed) -> guide family``.
        heldout: (M, D) rows not fitted, for ``heldout_log_likelihood`` (mean per row).
        should_stop: asked during each fit; True ends the sweep, the K in progress dropped.
        on_fit: called with (k, restart) after each fit.
        fit_options: passed to ``inference.em.fit`` (max_iter, tol, chunk_size).
    Returns:
        the rows of the K's finished (``COLUMNS``), and the best of them (None if none).
    """
    rows: list[dict[str, Any]] = []
    best: Candidate | None = None
    for k in ks:
        kept: tuple[FitResult, int] | None = None
        for restart in range(restarts):
            model = build(k, seed + restart)
            result = fit(
                model, x, guide_at(k, seed + restart), should_stop=should_stop, **fit_options
            )
            if result.stop_reason == "interrupted":
                return rows, best
            if kept is None or result.trace[-1].elbo > kept[0].trace[-1].elbo:
                kept = (result, seed + restart)
            on_fit(k, restart)
        assert kept is not None, "restarts >= 1"
        result, kept_seed = kept
        chunk = int(fit_options.get("chunk_size", DEFAULT_CHUNK_SIZE))
        terms = evidence_terms(result.model, x, chunk)
        n_params = n_parameters(result.model)
        hard = bool(getattr(guide_at(k, kept_seed), "hard", False))
        row: dict[str, Any] = {
            "k": k,
            "log_likelihood": terms.log_evidence,
            "elbo": result.trace[-1].elbo,
            "n_parameters": n_params,
            **criteria(terms, n_params, hard),
            "heldout_log_likelihood": "",
            "seed": kept_seed,
        }
        if heldout is not None:
            held = evidence_terms(result.model, heldout, chunk)
            row["heldout_log_likelihood"] = held.log_evidence / held.n
        rows.append(row)
        if is_better(row, best.row if best else None, criterion):
            best = Candidate(row, kept_seed, result)
    return rows, best


def split_heldout(x: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(training rows, held-out rows): a seeded random ``fraction`` of the rows held out."""
    n = x.shape[0]
    n_held = round(fraction * n)
    if not 0 < fraction < 1 or n_held < 1 or n_held >= n:
        raise MixemError(
            f"--heldout-fraction {fraction} of {n} rows leaves no held-out or no training row; "
            "use a fraction in (0, 1) with at least one row on each side"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
    return x[order[n_held:]], x[order[:n_held]]


class Selection(NamedTuple):
    """k: the chosen K; rows: one dict per K (``COLUMNS``); best: its fit and seed."""

    k: int
    rows: list[dict[str, Any]]
    best: Candidate


def select_k(
    model: str,
    x: Tensor,
    ks: Iterable[int],
    guide: str = "delta",
    *,
    criterion: str = "bic",
    restarts: int = 1,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    model_options: dict[str, Any] | None = None,
    **fit_options: Any,
) -> Selection:
    """``mixem select`` from Python: fit ``model`` (a name in ``models.MODELS``) on ``x``
    (N, D) for every K of ``ks`` from k-means++ starts, and choose K by ``criterion``.

    With ``criterion="heldout"`` a seeded ``heldout_fraction`` of the rows is held out and
    every other column is computed on the rest. ``fit_options``: max_iter, tol, chunk_size.
    """
    from inference.guides import parse_guide
    from inference.init import kmeans_plusplus
    from inference.user_model import build as build_from
    from inference.user_model import resolve
    from inference.validation import check_data

    if criterion not in CRITERIA:
        raise MixemError(f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
    builder = resolve(model)
    ks = list(ks)
    if not ks or min(ks) < 1:
        raise MixemError(f"ks must be K's >= 1, got {ks}")
    heldout = None
    if criterion == "heldout":
        x, heldout = split_heldout(x, heldout_fraction, seed)
    check_data(x, max(ks))

    def build(k: int, start_seed: int) -> Any:
        centres = kmeans_plusplus(x, k, torch.Generator(device=x.device).manual_seed(start_seed))
        return build_from(builder, centres, x, dict(model_options or {}))

    rows, best = sweep(
        x,
        ks,
        build,
        lambda k, s: parse_guide(guide, k, s),
        criterion=criterion,
        restarts=restarts,
        seed=seed,
        heldout=heldout,
        **fit_options,
    )
    assert best is not None, "no interruption here, and ks is not empty"
    return Selection(int(best.row["k"]), rows, best)
