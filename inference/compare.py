"""One model, one data set, several guide families: fits from the same start, traces together.

    results = compare(RestrictedGMM(init), x, ["delta", "categorical", "tempered:0.5", "topk:2"])
    rows = trace_rows(results)            # one dict per guide and iteration, ``guide`` first
    plot_compare(results, "compare.png")  # distance to the best ELBO, and the KL gap, per point
    write_compare_outputs("runs/cmp", results, {"data": "iris"})  # what `mixem compare` writes

Every guide starts from a deep copy of the model it is given (or a fresh model from a factory),
so their first records share theta_0: the same log evidence, a different ELBO per family.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor

from inference.compare_plot import plot_compare_traces
from inference.em import FitResult, MStep, fit
from inference.enumerate import DEFAULT_CHUNK_SIZE
from inference.errors import MixemError
from inference.guides import GuideFamily, Schedule, parse_schedule
from inference.guides.amortised import write_encoder
from inference.outputs import write_json, write_npy, write_npz, write_plot, write_text
from inference.params import get_params
from inference.trace import (
    TraceRecord,
    csv_text,
    fields_of,
    format_evidence,
    optional_values,
    to_rows,
)

GuideSpec = str | GuideFamily | Schedule


def guide_label(guide: GuideSpec) -> str:
    """The name a guide (spec string, family or schedule) is reported under."""
    if isinstance(guide, str):
        return guide.strip()
    name = getattr(guide, "name", None)
    return name if isinstance(name, str) else getattr(guide, "__name__", repr(guide))


def parse_guides(
    guides: Sequence[GuideSpec], n_components: int, seed: int = 0
) -> dict[str, GuideFamily | Schedule]:
    """Families and schedules by label, spec strings parsed; labels must be distinct.

    Args:
        guides: ``"delta"``, ``"topk:2"``, ``"anneal:5:1:20"``, a family or a schedule.
        n_components: K (bounds ``topk``).
        seed: seed of every ``sampled`` that names none.
    """
    if not guides:
        raise MixemError("no guide to compare; give at least one, e.g. delta,categorical")
    parsed: dict[str, GuideFamily | Schedule] = {}
    for guide in guides:
        label = guide_label(guide)
        if label in parsed:
            raise MixemError(f"guide {label!r} is listed twice; each guide is fitted once")
        parsed[label] = (
            parse_schedule(guide, n_components, seed) if isinstance(guide, str) else guide
        )
    return parsed


def _fresh_model(model: Any) -> Any:
    """A deep copy of a model (has ``n_components``), or a new one from a factory."""
    if hasattr(model, "n_components"):
        return copy.deepcopy(model)
    if callable(model):
        return model()
    raise MixemError("model must be a mixture model or a function returning one")


def _labelled(
    callback: Callable[[str, TraceRecord], None] | None, label: str
) -> Callable[[TraceRecord], None] | None:
    """``fit``'s one-argument callback for the fit of ``label``."""
    if callback is None:
        return None
    return lambda record: callback(label, record)


def compare(
    model: Any,
    x: Tensor,
    guides: Sequence[GuideSpec],
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    m_step: Literal["auto", "closed", "gradient"] | MStep = "auto",
    callback: Callable[[str, TraceRecord], None] | None = None,
) -> dict[str, FitResult]:
    """Fit ``model`` on ``x`` under each guide, every fit from the same initial parameters.

    Args:
        model: a mixture at its initial parameters, deep-copied for each guide and never
            changed itself; or a function of no arguments returning a fresh one (it must
            return the same start each time for the comparison to be fair).
        x: (N, D) data.
        guides: spec strings (``"delta"``, ``"tempered:0.5"``, ``"anneal:5:1:20"``), families
            or schedules; fitted in this order.
        max_iter, tol, chunk_size, m_step: as ``inference.em.fit``, the same for every guide.
        seed: seed of every ``sampled`` spec that names none.
        callback: ``(label, record)`` after each E-step of each fit.
    Returns:
        ``label -> FitResult`` in the order of ``guides``; each result's model is its own copy.
    """
    probe = _fresh_model(model)
    families = parse_guides(guides, int(probe.n_components), seed)
    results: dict[str, FitResult] = {}
    for label, family in families.items():
        results[label] = fit(
            _fresh_model(model),
            x,
            family,
            max_iter=max_iter,
            tol=tol,
            chunk_size=chunk_size,
            m_step=m_step,
            callback=_labelled(callback, label),
        )
    return results


def trace_rows(results: dict[str, FitResult]) -> list[dict[str, Any]]:
    """One row per guide and iteration: ``guide`` then the ``TraceRecord`` fields (the same
    columns for every guide: ``amortisation_gap`` when any of them has one)."""
    fields = fields_of(result.trace for result in results.values())
    return [
        row
        for label, result in results.items()
        for row in to_rows(result.trace, fields, guide=label)
    ]


def summary(results: dict[str, FitResult]) -> dict[str, dict[str, Any]]:
    """Final values per guide: M-steps, stopping reason, and the last record's numbers."""
    out = {}
    for label, result in results.items():
        last = result.trace[-1]
        out[label] = {
            "n_iter": result.n_iter,
            "converged": result.converged,
            "stop_reason": result.stop_reason,
            "elbo": last.elbo,
            "log_evidence": last.log_evidence,
            "kl_gap": last.kl_gap,
            **optional_values(last),  # an amortised guide's amortisation_gap
            "seconds": sum(r.seconds for r in result.trace),
        }
    return out


def plot_compare(
    results: dict[str, FitResult], path: str | Path, title: str = "ELBO by guide"
) -> None:
    """Each guide's distance to the best final ELBO and its KL gap, per point, in one PNG at
    ``path`` (``inference.compare_plot``)."""
    n = int(next(iter(results.values())).labels.shape[0])
    traces = {label: result.trace for label, result in results.items()}
    plot_compare_traces(traces, path, n, title)


def guide_directory(label: str) -> str:
    """A guide's subdirectory of a comparison's outputs: its label, ':' spelled '_'."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


def write_guide_outputs(out: Path, results: dict[str, FitResult]) -> None:
    """``out/guides/LABEL/labels.npy`` and ``params.npz``: each guide's own fit (and an
    amortised guide's ``encoder.pt``)."""
    for label, result in results.items():
        where = out / "guides" / guide_directory(label)
        labels = result.labels.cpu().numpy().astype(np.int64)
        write_npy(where / "labels.npy", labels)
        params = {k: v.cpu().numpy() for k, v in get_params(result.model).items()}
        write_npz(where / "params.npz", params)
        write_encoder(where, getattr(result, "guide", None))  # an HMM fit has no guide field


def write_compare_outputs(
    out: str | Path, results: dict[str, FitResult], run_info: dict[str, Any]
) -> list[str]:
    """Write ``out/compare.png``, ``out/trace.csv``, ``out/summary.json`` and each guide's
    labels and parameters (``write_guide_outputs``), each file atomically.

    Args:
        out: directory (created if missing).
        results: as ``compare`` returns them.
        run_info: model, data and settings, copied to the top of ``summary.json``.
    Returns:
        One line per guide with its final numbers, and the directory, for printing.
    """
    out, final = Path(out), summary(results)
    write_plot(out / "compare.png", lambda p: plot_compare(results, p))
    write_guide_outputs(out, results)
    write_text(out / "trace.csv", csv_text(trace_rows(results)))
    write_json(out / "summary.json", {"status": "completed", **run_info, "guides": final})
    lines = [
        f"{label}: {v['n_iter']} M-steps, {v['stop_reason']}; ELBO {v['elbo']:.6g}, "
        f"log evidence {format_evidence(v['log_evidence'])}"
        for label, v in final.items()
    ]
    return [*lines, f"-> {out}"]
